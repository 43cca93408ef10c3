"""Prometheus metrics of the aggregator, derived from the events it already records.

Why through the EventSink: every state change the round engine and the gRPC edge make is already
recorded as an event, so wrapping the sink gives the counters without touching the state machine.
Label values come from fixed sets only (gRPC status code names, round outcomes, the code's own
event names, verified member names), never from text a caller sent, so the series stay bounded.

Off by default: ``metrics_listen = "127.0.0.1:9464"`` in aggregator.toml turns it on. It is a
separate plain-HTTP listener; it shows counts and timings (what the aggregator already learns),
never ciphertexts, keys or metrics values, and should stay on loopback or a monitoring network.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from audit.events import EventSink
from protocol.vocabulary import JobStatus

# Every gRPC status code name; anything else becomes "other".
STATUS_CODES = frozenset(code.name for code in grpc.StatusCode)
EVENT_NAME = re.compile(r"^[a-z][a-z_]{0,47}$")
ROUND_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
KEEP_AGGREGATE_SIZES = 1024  # bytes-out bookkeeping: sizes of the most recent released aggregates


def upload_refusal_reason(details: dict[str, Any]) -> str:
    """A bounded reason label for a refused RPC (an rpc_refused event): the gRPC code, lower-cased."""
    code = str(details.get("code", ""))
    if not code:  # refused by the interceptor: no certificate, revoked, or wrong role
        code = "PERMISSION_DENIED" if "role" in str(details.get("reason", "")) else "UNAUTHENTICATED"
    return code.lower() if code in STATUS_CODES else "other"


class AggregatorMetrics:
    """The aggregator's registry and the sink wrapper that feeds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rounds_opened = Counter("cipherfed_rounds_opened", "Rounds opened (retries included)", registry=r)
        self.rounds_closed = Counter("cipherfed_rounds_closed", "Rounds closed, by outcome", ["outcome"], registry=r)
        self.round_duration = Histogram(
            "cipherfed_round_duration_seconds",
            "Wall time from a round's opening to its close",
            ["outcome"],
            buckets=ROUND_BUCKETS,
            registry=r,
        )
        self.uploads_accepted = Counter("cipherfed_uploads_accepted", "Uploads committed into a round", registry=r)
        self.uploads_refused = Counter(
            "cipherfed_uploads_refused", "Uploads refused, by gRPC status code", ["reason"], registry=r
        )
        self.uploads_rolled_back = Counter(
            "cipherfed_uploads_rolled_back", "Partial uploads subtracted from a round again", registry=r
        )
        self.bytes_in = Counter("cipherfed_upload_bytes", "Ciphertext bytes accepted in uploads", registry=r)
        self.bytes_out = Counter(
            "cipherfed_aggregate_bytes_sent", "Aggregate bytes sent to silos (downloads)", registry=r
        )
        self.rpc_refused = Counter(
            "cipherfed_rpc_refused", "Refused RPCs of any method, by gRPC status code", ["code"], registry=r
        )
        self.jobs_ended = Counter("cipherfed_jobs_ended", "Jobs that ended, by status", ["status"], registry=r)
        self.audit_records = Counter(
            "cipherfed_audit_records", "Records written to the aggregator's audit log, by event", ["event"], registry=r
        )
        self._lock = threading.Lock()
        self._open: dict[str, float] = {}  # job -> monotonic time its current round opened
        self._aggregate_bytes: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._server: Any = None

    # ------------------------------------------------------------------ wiring
    def observe(self, sink: EventSink) -> EventSink:
        """The sink to hand to the engine and service: records as before, then counts."""
        return MetricsSink(sink, self)

    def watch(self, active_jobs: Callable[[], int], last_polls: Callable[[], dict[str, float]]) -> None:
        """Gauges read at scrape time from the aggregator's own state."""
        self.registry.register(_StateCollector(active_jobs, last_polls))

    def serve(self, listen: str) -> int:
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), host.strip("[]") or "127.0.0.1", registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ events
    def count(self, event: str, job: str | None, round: int | None, details: dict[str, Any]) -> None:
        self.audit_records.labels(event if EVENT_NAME.match(event) else "other").inc()
        handler = _HANDLERS.get(event)
        if handler is not None:
            with self._lock:
                handler(self, job or "", -1 if round is None else int(round), details)

    def _round_opened(self, job: str, round: int, details: dict[str, Any]) -> None:
        self.rounds_opened.inc()
        self._open[job] = time.monotonic()

    def _round_closed(self, job: str, outcome: str) -> None:
        opened = self._open.pop(job, None)
        if opened is not None:
            self.rounds_closed.labels(outcome).inc()
            self.round_duration.labels(outcome).observe(time.monotonic() - opened)

    def _released(self, job: str, round: int, details: dict[str, Any]) -> None:
        self._round_closed(job, "released")
        self._aggregate_bytes[(job, round)] = int(details.get("bytes_out", 0))
        while len(self._aggregate_bytes) > KEEP_AGGREGATE_SIZES:
            self._aggregate_bytes.popitem(last=False)

    def _round_failed(self, job: str, round: int, details: dict[str, Any]) -> None:
        self._round_closed(job, JobStatus.FAILED)  # the status the round row is left in

    def _accepted(self, job: str, round: int, details: dict[str, Any]) -> None:
        self.uploads_accepted.inc()
        self.bytes_in.inc(max(0, int(details.get("bytes", 0))))

    def _downloaded(self, job: str, round: int, details: dict[str, Any]) -> None:
        self.bytes_out.inc(self._aggregate_bytes.get((job, round), 0))

    def _refused(self, job: str, round: int, details: dict[str, Any]) -> None:
        reason = upload_refusal_reason(details)
        self.rpc_refused.labels(reason).inc()
        if str(details.get("method", "")).rsplit("/", 1)[-1] == "Upload":
            self.uploads_refused.labels(reason).inc()

    def _rolled_back(self, job: str, round: int, details: dict[str, Any]) -> None:
        self.uploads_rolled_back.inc()


_Handler = Callable[[AggregatorMetrics, str, int, dict[str, Any]], None]
_HANDLERS: dict[str, _Handler] = {
    "round_opened": AggregatorMetrics._round_opened,
    "aggregate_released": AggregatorMetrics._released,
    "round_failed": AggregatorMetrics._round_failed,
    "upload_accepted": AggregatorMetrics._accepted,
    "aggregate_downloaded": AggregatorMetrics._downloaded,
    "rpc_refused": AggregatorMetrics._refused,
    "upload_rolled_back": AggregatorMetrics._rolled_back,
}


def _ended(status: str) -> _Handler:
    def ended(metrics: AggregatorMetrics, job: str, round: int, details: dict[str, Any]) -> None:
        metrics._round_closed(job, status)  # a round still open when its job ends (abort, declines)
        metrics.jobs_ended.labels(status).inc()

    return ended


_HANDLERS.update(
    job_completed=_ended(JobStatus.COMPLETED),
    job_failed=_ended(JobStatus.FAILED),
    job_aborted=_ended(JobStatus.ABORTED),
)


class MetricsSink:
    """An EventSink that forwards to the real one (audit chain first) and then updates the metrics."""

    def __init__(self, inner: EventSink, metrics: AggregatorMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    @property
    def head(self) -> str:
        return self.inner.head

    def record(
        self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **details: Any
    ) -> None:
        self.inner.record(event, actor, job=job, round=round, **details)
        self.metrics.count(event, job, round, details)


class _StateCollector(Collector):
    def __init__(self, active_jobs: Callable[[], int], last_polls: Callable[[], dict[str, float]]) -> None:
        self._active_jobs = active_jobs
        self._last_polls = last_polls

    def collect(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily("cipherfed_active_jobs", "Jobs running now", value=self._active_jobs())
        since = GaugeMetricFamily(
            "cipherfed_member_seconds_since_last_poll",
            "Seconds since each member (certificate name) last polled",
            labels=["member"],
        )
        now = time.time()
        for member, at in sorted(self._last_polls().items()):
            since.add_metric([member], max(0.0, now - at))
        yield since

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []  # values are read from state at scrape time
