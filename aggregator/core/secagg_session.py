"""One secure-aggregation session at the aggregator: its state, limits and the credentials it signs with.

``core.secagg`` runs the protocol over these; the round core passes in how to release or fail a round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from aggregator.core.uploads import OpenRound
from crypto.compact import CompactParams
from crypto.pki import Identity
from crypto.secagg.encoding import RoundContext
from crypto.secagg.graph import Graph
from crypto.secagg.keys import Advertisement
from crypto.secagg.policy import SecAggPolicy
from crypto.secagg.unmask import ContributorStatement, StatementSignature, UnmaskResponse

MAX_SHARE_ENVELOPE_BYTES = 4 << 10
MAX_ANSWER_BYTES = 1 << 20
MAX_CONSISTENCY_BYTES = 1 << 10

Release = Callable[[OpenRound, Any, list[str], str, float, bytes], None]  # ..., the unmasking record
Fail = Callable[[OpenRound, list[str], str, "str | None", float], None]


@dataclass(frozen=True)
class AggregatorCredentials:
    """The aggregator's certificate and key: it signs the unmasking request (silos check it)."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


@dataclass
class Session:
    """One attempt of one round: what the silos advertised, the roster, and the unmasking in progress."""

    open_round: OpenRound
    context: RoundContext
    policy: SecAggPolicy
    params: CompactParams
    setup_deadline: float
    adverts: dict[str, tuple[Identity, x509.Certificate, Advertisement, bytes]] = field(default_factory=dict)
    roster: dict[str, str] | None = None  # fingerprint -> name, fixed when published
    roster_bytes: bytes = b""  # the roster message as published (released with the masked sum)
    graph: Graph | None = None
    shares_sent: set[tuple[str, str]] = field(default_factory=set)  # (sender, recipient) fingerprints relayed
    # unmasking (after the round core closed the round)
    layout: Any = None
    contributors: list[str] = field(default_factory=list)  # names
    why: str = ""
    statement: ContributorStatement | None = None
    unmask_deadline: float = 0.0
    signatures: dict[str, StatementSignature] = field(default_factory=dict)
    request_sent: bool = False
    answers: dict[str, UnmaskResponse] = field(default_factory=dict)
    # The session's relayed messages live with it, in memory (a restart starts a new attempt anyway):
    # (recipient, kind, sender) -> payload, taken once by its recipient.
    mail: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    relay_bytes: int = 0  # everything relayed for this session, added to the job's count when it ends

    @property
    def seq(self) -> int:
        return self.context.round

    def name_of(self, fingerprint: str) -> str:
        assert self.roster is not None
        return self.roster[fingerprint]

    def post(self, sender: str, recipient: str, kind: str, payload: bytes) -> None:
        """Keep a message for its recipient (the caller holds the round lock)."""
        self.mail[(recipient, str(kind), sender)] = payload
        self.relay_bytes += len(payload)

    def take(self, recipient: str, kind: str, sender: str) -> bytes | None:
        return self.mail.pop((recipient, kind, sender), None)

    def fingerprint_of(self, name: str) -> str | None:
        if self.roster is None:
            return None
        return next((fp for fp, n in self.roster.items() if n == name), None)
