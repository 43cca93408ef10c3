"""In-process simulation of one secure-aggregation round with n silos: for tests and the cost benchmark.

Not a protocol implementation (no processes, no network, no persistence): it calls the library in
the order the round protocol will, with real certificates (in memory, issued by a throwaway CA),
real signatures, real AEAD envelopes and real masks, and lets a test play the aggregator.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crypto.pki import certificate_fingerprint
from crypto.secagg.encoding import RoundContext
from crypto.secagg.graph import Graph, neighbour_graph, round_graph_seed
from crypto.secagg.keys import Advertisement, Roster, RoundKeys, advertise, verify_advertisement
from crypto.secagg.masking import mask_vector, share_secrets
from crypto.secagg.transport import ShareBundle, ShareEnvelope, open_shares
from crypto.secagg.unmask import (
    ContributorStatement,
    RoundMaterial,
    ShareResponder,
    UnmaskResponse,
    UnmaskResult,
    apply_correction,
    make_request,
    unmask,
)


@dataclass
class Member:
    """A consortium member's certificate and signing key (what a real silo loads from disk)."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return certificate_fingerprint(self.cert)


def _cert(
    name: str, public: ec.EllipticCurvePublicKey, issuer: x509.Name, ca_key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )


def make_members(n: int, prefix: str = "silo") -> list[Member]:
    """``n`` members with P-256 keys and certificates from one in-memory CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secagg-simulation-ca")])
    members = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        members.append(Member(f"{prefix}-{i}", _cert(f"{prefix}-{i}", key.public_key(), issuer, ca_key), key))
    return members


@dataclass
class SimSilo:
    member: Member
    keys: RoundKeys
    advert: Advertisement
    bundles: dict[str, ShareBundle] = field(default_factory=dict)
    responder: ShareResponder | None = None
    material: RoundMaterial | None = None
    masked: np.ndarray | None = None


@dataclass
class SimRound:
    """Everything the aggregator saw (adverts, envelopes, masked vectors, answers) plus the silos' state."""

    context: RoundContext
    threshold: int
    w: int
    graph: Graph
    roster: Roster
    silos: dict[str, SimSilo]
    envelopes: list[ShareEnvelope]
    certificates: dict[str, x509.Certificate]
    timings: dict[str, float] = field(default_factory=dict)
    statement: ContributorStatement | None = None
    responses: list[UnmaskResponse] = field(default_factory=list)

    @property
    def masked(self) -> dict[str, np.ndarray]:
        return {fp: s.masked for fp, s in self.silos.items() if s.masked is not None}


@contextlib.contextmanager
def _clock(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]``."""
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def setup_round(
    members: list[Member],
    context: RoundContext,
    values: Mapping[str, np.ndarray],
    w: int,
    threshold: int,
    k: int | None = None,
    drop_before_upload: Iterable[str] = (),
) -> SimRound:
    """Advertise, verify, share, open and mask: the round up to the uploads (dropped silos do not upload)."""
    sim = agree_round(members, context, w, threshold, k)
    dropped = set(drop_before_upload)
    for fp in sim.silos:
        if fp not in dropped:
            with _clock(sim.timings, "mask_vector"):
                silo_mask(sim, fp)(values[fp])
    return sim


def silo_mask(sim: SimRound, fp: str) -> Callable[[np.ndarray], np.ndarray]:
    """The ``mask`` callable silo ``fp`` hands its encryptor; it records the masked vector as its upload."""
    silo = sim.silos[fp]
    assert silo.material is not None

    def mask(values: np.ndarray) -> np.ndarray:
        assert silo.material is not None
        silo.masked = mask_vector(
            values, sim.w, sim.context, silo.keys, fp, sim.roster, silo.material.mask_set, sim.threshold
        )
        return silo.masked

    return mask


def agree_round(members: list[Member], context: RoundContext, w: int, threshold: int, k: int | None = None) -> SimRound:
    """Advertise, verify, share and open: every silo holds its keys, roster and mask set, nothing is masked yet."""
    timings: dict[str, float] = {}
    certificates = {m.fingerprint: m.cert for m in members}
    graph = neighbour_graph(list(certificates), round_graph_seed(context), k)
    silos: dict[str, SimSilo] = {}
    for m in members:
        keys = RoundKeys.generate()
        silos[m.fingerprint] = SimSilo(m, keys, advertise(keys, context, m.cert, m.key))
    with _clock(timings, "verify_adverts"):
        verified = [verify_advertisement(s.advert, context, s.member.cert) for s in silos.values()]
    roster = Roster.build(context, verified)
    envelopes: list[ShareEnvelope] = []
    with _clock(timings, "share_secrets"):
        for fp, s in silos.items():
            envelopes.extend(share_secrets(context, s.keys, fp, roster, graph[fp], threshold, s.member.key))
    with _clock(timings, "open_shares"):
        for e in envelopes:
            r = silos[e.recipient]
            r.bundles[e.sender] = open_shares(
                e,
                context,
                r.keys,
                e.recipient,
                roster.x_of(e.recipient),
                roster.advert(e.sender),
                certificates[e.sender],
            )
    for fp, s in silos.items():
        mask_set = frozenset(s.bundles) & graph[fp]
        s.material = RoundMaterial(context, threshold, graph, mask_set, dict(s.bundles))
        s.responder = ShareResponder(fp, s.member.key)
    return SimRound(context, threshold, w, graph, roster, silos, envelopes, certificates, timings)


def finish_round(sim: SimRound, aggregator: Member, length: int) -> tuple[np.ndarray, UnmaskResult]:
    """Honest aggregator: statement, consistency signatures, answers, unmask; returns the exact sum."""
    contributors = [fp for fp, s in sim.silos.items() if s.masked is not None]
    statement = ContributorStatement.make(sim.context, sim.roster.members, contributors)
    signatures = []
    for fp in contributors:
        silo = sim.silos[fp]
        assert silo.responder is not None and silo.material is not None
        signatures.append(silo.responder.sign_statement(statement, silo.material))
    request = make_request(statement, aggregator.cert, aggregator.key, signatures)
    responses: list[UnmaskResponse] = []
    with _clock(sim.timings, "respond"):
        for fp in contributors:
            silo = sim.silos[fp]
            assert silo.responder is not None and silo.material is not None
            responses.append(silo.responder.respond(request, silo.material, sim.certificates, aggregator.cert))
    sim.statement, sim.responses = statement, responses
    with _clock(sim.timings, "unmask"):
        result = unmask(statement, responses, sim.roster, sim.graph, sim.threshold, sim.w, length, sim.certificates)
    masked_sum = np.zeros(length, dtype=np.uint64)
    for fp in contributors:
        masked = sim.silos[fp].masked
        assert masked is not None
        masked_sum += masked
    return apply_correction(masked_sum, result.correction, sim.w), result
