"""What the core needs from durable state: a small typed contract, and the rows it deals in.

``aggregator.store.StateStore`` (one SQLite file) implements ``JobStore``; ``aggregator.aggregate_files``
implements ``AggregateArchive``. The core depends on these protocols, never on SQLite or file formats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from crypto.packing import Manifest


@dataclass
class JobRow:
    job_id: str
    name: str
    spec_json: str
    status: str
    reason: str
    current_round: int
    rounds_total: int
    submitted_by: str
    created: float


@dataclass
class RoundRow:
    job_id: str
    round: int
    status: str
    attempt: int
    opened_at: float
    deadline: float
    closed_at: float | None
    bytes_in: int
    contributors: int
    aggregate_path: str | None
    reason: str


class JobStore(Protocol):
    """Jobs, rounds, contributions, metrics, declines, key material and the relay mailbox."""

    def transaction(self) -> AbstractContextManager[None]: ...
    def close(self) -> None: ...

    def insert_job(self, row: JobRow) -> None: ...
    def update_job(self, job_id: str, **fields: Any) -> None: ...
    def job(self, job_id: str) -> JobRow | None: ...
    def jobs(self, status: str | None = None) -> list[JobRow]: ...

    def upsert_round(
        self, job_id: str, round_index: int, status: str, attempt: int, opened_at: float, deadline: float
    ) -> None: ...
    def update_round(self, job_id: str, round_index: int, **fields: Any) -> None: ...
    def round(self, job_id: str, round_index: int) -> RoundRow | None: ...
    def rounds(self, job_id: str) -> list[RoundRow]: ...

    def add_contribution(
        self, job_id: str, round_index: int, silo: str, digest: str, nbytes: int, audit_head: str
    ) -> None: ...
    def contributions(self, job_id: str, round_index: int) -> dict[str, tuple[str, int, str]]: ...
    def clear_contributions(self, job_id: str, round_index: int) -> None: ...

    def put_metrics(self, job_id: str, round_index: int, silo: str, metrics: dict[str, float]) -> None: ...
    def metrics(self, job_id: str) -> dict[int, dict[str, dict[str, float]]]: ...
    def metrics_of(self, job_id: str, round_index: int, silo: str) -> dict[str, float]: ...
    def add_decline(self, job_id: str, silo: str, round_index: int, reasons: list[str]) -> None: ...
    def declines(self, job_id: str, round_index: int = -1) -> dict[str, list[str]]: ...
    def all_declines(self, job_id: str) -> list[tuple[str, int, list[str]]]: ...

    def put_key_material(
        self,
        scope: str,
        fingerprint: str,
        public_context: bytes,
        custodian: str,
        wrapped: dict[str, bytes],
        endorsement: bytes = b"",
        custodian_cert: bytes = b"",
    ) -> None: ...
    def key_material(self, scope: str) -> tuple[str, bytes, str] | None: ...
    def key_endorsement(self, scope: str) -> tuple[bytes, bytes]: ...
    def scope_of_fingerprint(self, fingerprint: str) -> str | None: ...
    def wrapped_key(self, scope: str, member: str) -> bytes | None: ...

    def relay_put(self, job_id: str, sender: str, recipient: str, kind: str, seq: int, payload: bytes) -> None: ...
    def add_relay_bytes(self, job_id: str, nbytes: int) -> None: ...
    def relay_bytes(self, job_id: str) -> int: ...
    def relay_peek(self, job_id: str, recipient: str, kind: str, seq: int, sender: str) -> list[bytes]: ...
    def relay_take(self, job_id: str, recipient: str, kind: str, seq: int, sender: str) -> tuple[int, list[bytes]]: ...


class AggregateArchive(Protocol):
    """Released aggregates: written once when a round closes, streamed back to its participants."""

    def write(
        self, job_id: str, round_index: int, manifest: Manifest, chunks: Sequence[bytes], unmasking: bytes = b""
    ) -> tuple[str, int]:
        """Store atomically (with the unmasking record of a still-masked sum); returns (where, payload bytes)."""
        ...

    def read(self, where: str) -> tuple[Manifest, bytes, Iterator[bytes]]:
        """The manifest, the unmasking record (empty unless masked), and the chunks."""
        ...
