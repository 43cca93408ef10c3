"""Latency of other callers while one member floods the aggregator with idle streams.

A real aggregator process over mTLS on 127.0.0.1 with its default limits. Measured in one run:
p50/p95 latency of a silo's Poll and of the coordinator's ListJobs with no flood, then again while
one member (``flooder``) holds ``--streams`` idle Upload streams (header never sent) and as many
health Watch streams open. The ratios flood/baseline are the headline: near 1 means the flood
starves nobody. Streams beyond the per-identity limit are refused (RESOURCE_EXHAUSTED); the JSON
says how many were admitted and refused.

    python -m benchmarks.stream_flood --json OUT
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.common import emit, machine
from cipherfed.localconsortium import LocalConsortium, job_toml
from protocol import cipherfed_pb2 as pb

SILOS = ["silo-a", "silo-b", "flooder"]


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"p50": round(statistics.median(ms), 3), "p95": round(p95, 3), "max": round(ms[-1], 3)}


def _measure(calls: dict[str, Callable[[], Any]], samples: int) -> dict[str, dict[str, float]]:
    """Interleaved samples of each call, so both see the same machine conditions. A call that fails
    (e.g. its deadline passes while it waits for a thread) counts with the time it took, and in
    ``failed``."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    failed = dict.fromkeys(calls, 0)
    for _ in range(samples):
        for name, call in calls.items():
            start = time.perf_counter()
            try:
                call()
            except grpc.RpcError:
                failed[name] += 1
            times[name].append(time.perf_counter() - start)
    return {name: {**_percentiles(t), "failed": failed[name]} for name, t in times.items()}


def _idle(release: threading.Event) -> Iterator[pb.UploadMessage]:
    release.wait(600)
    yield from ()


def _flood(c: LocalConsortium, streams: int, release: threading.Event) -> tuple[list[Any], list[Any]]:
    stub = c.stub("flooder")
    health = health_pb2_grpc.HealthStub(c.channel("flooder"))
    uploads = [stub.Upload.future(_idle(release), timeout=600) for _ in range(streams)]
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=600) for _ in range(streams)]
    return uploads, watches


def _settle(calls: list[Any], timeout_s: float = 60.0) -> None:
    """Wait until the number of streams still open has not changed for a second."""
    deadline = time.time() + timeout_s
    last, stable_since = -1, time.time()
    while time.time() < deadline:
        pending = sum(1 for f in calls if not f.done())
        if pending != last:
            last, stable_since = pending, time.time()
        elif time.time() - stable_since >= 1.0:
            return
        time.sleep(0.1)


def _outcome(calls: list[Any]) -> dict[str, int]:
    refused = sum(1 for f in calls if f.done() and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    return {"opened": len(calls), "refused": refused, "held": sum(1 for f in calls if not f.done())}


def run(streams: int, samples: int, workdir: Path, call_timeout_s: float = 10.0) -> dict[str, Any]:
    c = LocalConsortium(workdir, SILOS)
    c.provision()
    c.write_aggregator_config()
    c.start_aggregator()
    c.write_admin_config()
    release = threading.Event()
    try:
        coordinator = c.stub("coordinator")
        for i in range(3):  # something to list and to poll
            spec = job_toml(f"flood{i}", ["silo-a", "silo-b"], c.fingerprint, ["x"], round_timeout_s=3600)
            coordinator.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30)
        silo = c.stub("silo-a")
        calls = {
            "poll": lambda: silo.Poll(pb.PollRequest(), timeout=call_timeout_s),
            "list_jobs": lambda: coordinator.ListJobs(pb.ListJobsRequest(), timeout=call_timeout_s),
        }
        _measure(calls, 5)  # warm-up: connections, caches
        baseline = _measure(calls, samples)
        uploads, watches = _flood(c, streams, release)
        _settle(uploads + watches)  # every stream has reached the server: held, or refused
        flooded = _measure(calls, samples)
        outcome = {"upload": _outcome(uploads), "watch": _outcome(watches)}
        release.set()
        for w in watches:
            w.cancel()
        alive = c.processes["aggregator"].poll() is None
    finally:
        release.set()
        c.stop_all()
    ratios = {
        f"{name}_{q}": round(flooded[name][q] / baseline[name][q], 3)
        for name in calls
        for q in ("p50", "p95")
        if baseline[name][q] > 0
    }
    return {
        "benchmark": "stream_flood",
        "idle_streams_per_kind": streams,
        "samples": samples,
        "baseline_ms": baseline,
        "flood_ms": flooded,
        "ratios": ratios,
        "flood_streams": outcome,
        "aggregator_alive": alive,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=40, help="idle Upload streams, and as many Watch streams")
    parser.add_argument("--samples", type=int, default=200, help="calls of each kind per phase")
    parser.add_argument("--call-timeout", type=float, default=10.0, help="deadline of each measured call (s)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.streams, args.samples, args.workdir, args.call_timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="cipherfed-flood-") as tmp:
            result = run(args.streams, args.samples, Path(tmp), args.call_timeout)
    emit(result, args.json)


if __name__ == "__main__":
    main()
