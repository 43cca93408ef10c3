"""The node's connection to the aggregator. It only ever dials out: no listening socket exists."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc

from crypto.packing import Manifest
from protocol import cipherfed_pb2 as pb
from protocol.channel import TlsFiles, consortium_stub, secure_channel
from protocol.messages import clip_reasons, read_aggregate, upload_messages
from protocol.metrics import reportable

T = TypeVar("T")
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class Backoff:
    """Exponential backoff with jitter: 0.5 s doubling to 30 s, reset after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempt = base, cap, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return delay * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


class AggregatorClient:
    def __init__(self, address: str, tls: TlsFiles, server_name: str | None = None) -> None:
        self.address = address
        self._tls = tls
        self._server_name = server_name
        self._channel = secure_channel(address, tls, server_name)
        self.stub = consortium_stub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def call(self, fn: Callable[[], T], retries: int = 0, sleep: Callable[[float], None] = time.sleep) -> T:
        """Run an RPC, retrying only transient transport failures."""
        backoff = Backoff()
        while True:
            try:
                return fn()
            except grpc.RpcError as exc:
                if exc.code() not in TRANSIENT or backoff.attempt >= retries:
                    raise
                sleep(backoff.next_delay())

    def poll(self, wait_ms: int, known_version: int) -> pb.PollReply:
        return self.stub.Poll(pb.PollRequest(wait_ms=wait_ms, known_version=known_version), timeout=wait_ms / 1000 + 30)

    def upload(self, header: pb.UploadHeader, chunks: Iterable[bytes]) -> pb.UploadReceipt:
        return self.stub.Upload(upload_messages(header, chunks), timeout=3600)

    def download(self, job_id: str, round_index: int) -> tuple[pb.AggregateHeader, Manifest, list[bytes]]:
        return read_aggregate(
            self.stub.DownloadAggregate(pb.AggregateRequest(job_id=job_id, round=round_index), timeout=3600)
        )

    def report_metrics(self, job_id: str, round_index: int, metrics: dict[str, float], audit_head: str = "") -> None:
        report = pb.MetricsReport(job_id=job_id, round=round_index, metrics=reportable(metrics), audit_head=audit_head)
        self.stub.ReportMetrics(report, timeout=30)

    def decline(self, job_id: str, round_index: int, reasons: list[str]) -> None:
        self.stub.Decline(
            pb.DeclineRequest(job_id=job_id, round=round_index, reasons=clip_reasons(reasons)), timeout=30
        )
