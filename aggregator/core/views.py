"""What goes into and comes out of the core: plain dataclasses, converted to messages only at the edge."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the edge parses the wire header; the core only calls what it is handed
    from crypto.packing import Manifest
    from protocol.upload import SignedUpload


@dataclass(frozen=True)
class TaskView:
    """One job as a participant sees it when it polls."""

    job_id: str
    spec_json: str
    job_status: str
    round: int
    round_status: str
    completed_rounds: int
    uploaded: bool
    deadline_unix_ms: int
    reason: str
    declined: bool
    attempt: int = 1


@dataclass(frozen=True)
class UploadOffer:
    """The start of an upload: what the header says before it is parsed, and how to parse it.

    The header is parsed (``open_header``) only after the job and round checks pass and the declared
    size is bounded, so a hostile manifest costs nothing and refusals come in the documented order.
    """

    job_id: str
    round: int
    declared_values: int
    open_header: Callable[[], SignedUpload]


@dataclass(frozen=True)
class UploadReceipt:
    job_id: str
    round: int
    chunks: int
    bytes: int
    digest: str
    aggregator_audit_head: str = ""
    already_received: bool = False


@dataclass(frozen=True)
class ReleasedAggregate:
    """A released round's sum for one participant; ``unmasking`` is empty unless the sum is still masked."""

    manifest: Manifest
    chunks: Iterator[bytes]
    contributors: int
    unmasking: bytes


@dataclass(frozen=True)
class RoundView:
    round: int
    status: str
    contributors: list[str]
    metrics: list[tuple[str, dict[str, float]]]
    attempt: int = 0
    bytes_in: int = 0
    wall_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class DeclineView:
    silo: str
    round: int
    reasons: list[str]


@dataclass(frozen=True)
class JobStatusView:
    job_id: str
    name: str
    status: str
    reason: str
    rounds_total: int
    current_round: int
    rounds: list[RoundView]
    spec_json: str
    participants: list[str]
    submitted_by: str
    declined: list[str]
    relay_bytes: int
    declines: list[DeclineView] = field(default_factory=list)


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    name: str
    status: str
    current_round: int
    rounds_total: int
    created: str


@dataclass(frozen=True)
class KeyMaterialOffer:
    """What a custodian publishes under a scope (all opaque to the aggregator, checked before storing)."""

    scope: str
    fingerprint: str
    public_context: bytes
    wrapped: dict[str, bytes]
    endorsement: bytes
    custodian_cert: bytes


@dataclass(frozen=True)
class KeyMaterialView:
    scope: str
    fingerprint: str
    public_context: bytes
    wrapped_for_me: bytes
    custodian: str
    endorsement: bytes
    custodian_cert: bytes


@dataclass(frozen=True)
class RelayOffer:
    """One relayed message as its sender sent it (the sender is the caller's certificate)."""

    job_id: str
    to: str
    kind: str
    seq: int
    payload: bytes


@dataclass(frozen=True)
class RelayDelivery:
    """What a Receive hands over: the messages of one (kind, seq, sender)."""

    seq: int
    payloads: list[bytes]
