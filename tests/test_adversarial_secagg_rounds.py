"""Attacks on the secure-aggregation round protocol (issue 14), by a hostile aggregator and by hostile members.

Hostile aggregator: a real gRPC server in this test with the consortium's aggregator certificate and
real mutual TLS, playing the relay. It plays the other silos too, with their real certificates and
signing keys from the LocalConsortium directories (their adverts, shares and consistency signatures
are made with ``crypto.secagg`` exactly as a real silo makes them). The victim is the silo's own
round protocol (``silo_node.secagg_round.SecureAggregation``) on its own state directory and signed
audit log, talking to the hostile server through the node's real ``Relay`` and ``AggregatorClient``.

Honest aggregator: a real aggregator process with real silo processes (fewer than t survivors), or
with members driven by hand with their real certificates (hostile members against the relay checks).

The library-level attacks (split view on the ShareResponder alone, wrong shares, forged adverts in
memory) are in tests/test_adversarial_secagg.py; these test the round protocol's own checks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from audit.log import AuditLog, AuditSink
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from crypto.endorsement import TrustAnchors
from crypto.secagg.errors import BothSharesRefused
from crypto.secagg.graph import neighbour_graph, round_graph_seed
from crypto.secagg.keys import Advertisement, Roster, RoundKeys, advertise
from crypto.secagg.masking import share_secrets
from crypto.secagg.simulation import Member
from crypto.secagg.unmask import ContributorStatement, RoundMaterial, ShareResponder, make_request
from crypto.secagg.wire import decode_response, encode_request
from protocol import cipherfed_pb2 as pb
from protocol import cipherfed_pb2_grpc as pbg
from protocol.jobspec import parse_job_spec, secagg_policy
from protocol.secagg import RosterEntry, RosterMessage, encode_roster, round_context
from protocol.version import __version__
from protocol.vocabulary import AGGREGATOR_RECIPIENT, SecAggKind
from silo_node.client import AggregatorClient
from silo_node.relay import Relay
from silo_node.secagg_round import SecAggCredentials, SecAggRefused, SecureAggregation
from tests.helpers import serve_as_aggregator

SILOS = [f"silo-{i}" for i in range(1, 7)]  # silo-5 joins only the sparse job; silo-6 is never a participant
JOB4 = SILOS[:4]
JOB5 = SILOS[:5]
VICTIM = "silo-1"
OUTSIDER = "silo-6"
COLUMNS = ["x0", "x1"]
FP = "ab" * 16  # the victim never encrypts here: the key fingerprint only has to be well-formed
AGG = AGGREGATOR_RECIPIENT


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# ---------------------------------------------------------------------------------------------- the attacker
@dataclass
class Mailbox(pbg.ConsortiumServicer):
    """The relay as the attacker runs it: records what the victim sends, serves what the test put in the inbox."""

    inbox: dict[tuple[str, str, str, int], bytes] = field(default_factory=dict)  # (job, sender, kind, seq) -> payload
    sent: list[tuple[str, str, str, int, bytes]] = field(default_factory=list)  # (job, to, kind, seq, payload)
    on_send: Callable[[str, str, str, int, bytes], None] | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)

    def Send(self, request_iterator: Iterator[pb.RelayMessage], context: grpc.ServicerContext) -> pb.Ack:
        messages = list(request_iterator)
        m = messages[0]
        payload = b"".join(bytes(x.payload) for x in messages)
        with self.cond:
            self.sent.append((m.job_id, m.to, m.kind, int(m.seq), payload))
        if self.on_send is not None:
            self.on_send(m.job_id, m.to, m.kind, int(m.seq), payload)
        return pb.Ack()

    def Receive(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> Iterator[pb.RelayMessage]:
        key = (request.job_id, request.sender, request.kind, int(request.seq))
        deadline = time.time() + min(request.wait_ms, 3000) / 1000
        with self.cond:
            while key not in self.inbox and time.time() < deadline:
                self.cond.wait(0.05)
            payload = self.inbox.get(key)
        if payload is not None:
            yield pb.RelayMessage(
                job_id=request.job_id, sender=request.sender, kind=request.kind, seq=request.seq, payload=payload, last=True
            )

    def put(self, job_id: str, sender: str, kind: str, seq: int, payload: bytes) -> None:
        with self.cond:
            self.inbox[(job_id, sender, str(kind), seq)] = payload
            self.cond.notify_all()

    def sent_of(self, job_id: str, kind: str) -> list[tuple[str, str, str, int, bytes]]:
        return [s for s in self.sent if s[0] == job_id and s[2] == kind]


@dataclass
class Arena:
    consortium: LocalConsortium
    mailbox: Mailbox
    members: dict[str, Member]
    aggregator: Member
    counter: int = 0

    def job(self, participants: list[str] = JOB4, secagg: str = "") -> tuple[str, str]:
        self.counter += 1
        text = job_toml(
            f"sa{self.counter}", participants, FP, COLUMNS, he_profile="compact", scaling="local",
            compact="weight_cap = 100", secagg=secagg,
        )  # fmt: skip
        return f"job-{self.counter:04d}", text


@pytest.fixture(scope="module")
def arena(tmp_path_factory) -> Iterator[Arena]:
    c = LocalConsortium(tmp_path_factory.mktemp("secagg-hostile"), SILOS)
    c.provision(he_keys=False)
    mailbox = Mailbox()
    server = serve_as_aggregator(c, mailbox, 8)
    members = {
        n: Member(n, pki.load_certificate(c.nodes[n].cert), pki.load_private_key(c.nodes[n].key)) for n in SILOS
    }
    agg = Member(
        "aggregator",
        pki.load_certificate(c.agg_dir / "aggregator.crt"),
        pki.load_private_key(c.agg_dir / "aggregator.key"),
    )
    yield Arena(c, mailbox, members, agg)
    server.stop(0)


@dataclass
class HostileRound:
    """One session of one job, as the attacker sees it: the victim's protocol object and the other silos' secrets."""

    arena: Arena
    job_id: str
    spec_text: str
    participants: list[str]
    attempt: int = 1
    keys: dict[str, RoundKeys] = field(default_factory=dict)
    adverts: dict[str, Advertisement] = field(default_factory=dict)
    roster: Roster | None = None
    graph: dict[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spec = parse_job_spec(self.spec_text)
        self.policy = secagg_policy(self.spec)
        c = self.arena.consortium
        self.context = round_context(c.consortium, self.job_id, 0, self.attempt)
        self.dir = c.workdir / VICTIM / "state" / "jobs" / self.job_id
        self.audit_path = c.workdir / VICTIM / "state" / "audit.jsonl"
        for name in self.participants:
            if name != VICTIM:
                member = self.arena.members[name]
                self.keys[name] = RoundKeys.generate()
                self.adverts[name] = advertise(self.keys[name], self.context, member.cert, member.key)

    @property
    def seq(self) -> int:
        return self.context.round

    def fp(self, name: str) -> str:
        return self.arena.members[name].fingerprint

    def victim(self) -> SecureAggregation:
        """The silo's round protocol, as its node builds it (a fresh object on the same directory: a restart)."""
        c, me = self.arena.consortium, self.arena.members[VICTIM]
        ca = pki.load_certificate(c.ca_dir / "ca.crt")
        trust = TrustAnchors(ca, pki.RevocationList(c.ca_dir / "crl.pem", ca))
        client = AggregatorClient(f"127.0.0.1:{c.port}", c.tls(VICTIM), "localhost")
        relay = Relay(client, self.job_id, lambda: False, timeout_s=15)
        events = AuditSink(AuditLog(self.audit_path, me.key, me.cert, __version__), "test.victim")
        credentials = SecAggCredentials(c.consortium, me.key, me.cert, trust)
        self.dir.mkdir(parents=True, exist_ok=True)
        return SecureAggregation(self.job_id, self.spec, VICTIM, credentials, relay, events, self.dir)

    # ------------------------------------------------------------------ setup, played for the other silos
    def honest_entries(self, victim_advert: bytes) -> list[RosterEntry]:
        entries = []
        for name in self.participants:
            advert = victim_advert if name == VICTIM else self.adverts[name].to_bytes()
            entries.append(RosterEntry(name, _pem(self.arena.members[name].cert), advert))
        return entries

    def serve_setup(self, entries: Callable[[list[RosterEntry]], list[RosterEntry]] = lambda e: e) -> None:
        """On the victim's advert: publish a roster (``entries`` may tamper with it) and the others' shares."""
        mailbox = self.arena.mailbox

        def on_send(job_id: str, to: str, kind: str, seq: int, payload: bytes) -> None:
            if job_id != self.job_id or kind != SecAggKind.ADVERT or seq != self.seq:
                return
            victim_advert = Advertisement.from_bytes(payload)
            roster = RosterMessage(_pem(self.arena.aggregator.cert), entries(self.honest_entries(payload)))
            self.put(AGG, SecAggKind.ROSTER, encode_roster(roster))
            self.roster = Roster.build(self.context, [victim_advert, *self.adverts.values()])
            fps = [self.fp(n) for n in self.participants]
            self.graph = neighbour_graph(fps, round_graph_seed(self.context), self.policy.neighbours)
            me = self.fp(VICTIM)
            for name in self.participants:
                if name == VICTIM or me not in self.graph[self.fp(name)]:
                    continue
                member = self.arena.members[name]
                envelopes = share_secrets(
                    self.context, self.keys[name], member.fingerprint, self.roster, self.graph[member.fingerprint],
                    self.policy.threshold, member.key,
                )  # fmt: skip
                (mine,) = [e for e in envelopes if e.recipient == me]
                self.put(name, SecAggKind.SHARES, mine.to_bytes())

        mailbox.on_send = on_send

    # ------------------------------------------------------------------ unmasking, played for the other silos
    def statement(self, contributors: list[str], roster: list[str] | None = None) -> ContributorStatement:
        members = [self.fp(n) for n in (roster or self.participants)]
        return ContributorStatement.make(self.context, members, [self.fp(n) for n in contributors])

    def signature_of(self, name: str, statement: ContributorStatement):
        fp = self.fp(name)
        material = RoundMaterial(self.context, self.policy.threshold, self.graph, self.graph[fp], {})
        return ShareResponder(fp, self.arena.members[name].key).sign_statement(statement, material)

    def request(self, statement: ContributorStatement, signers: list[str], extra=()) -> bytes:
        signatures = [self.signature_of(n, statement) for n in signers] + list(extra)
        agg = self.arena.aggregator
        return encode_request(make_request(statement, agg.cert, agg.key, signatures))

    def audit(self, event: str) -> list[dict]:
        rows = [json.loads(line) for line in self.audit_path.read_text().splitlines()]
        return [r for r in rows if r["event"] == event and r.get("job") == self.job_id]

    def sent(self, kind: str) -> list[tuple[str, str, str, int, bytes]]:
        return [s for s in self.arena.mailbox.sent_of(self.job_id, kind) if s[3] == self.seq]

    def put(self, sender: str, kind: str, payload: bytes) -> None:
        self.arena.mailbox.put(self.job_id, sender, kind, self.seq, payload)


def _agreed(arena: Arena, participants: list[str] = JOB4, secagg: str = "") -> tuple[HostileRound, SecureAggregation]:
    """A session up to the masks: the victim advertised, verified an honest roster, exchanged shares."""
    job_id, text = arena.job(participants, secagg)
    r = HostileRound(arena, job_id, text, participants)
    r.serve_setup()
    victim = r.victim()
    victim.agree(0, 1)
    assert r.audit("secagg_shares_received")
    return r, victim


def _signed_by_victim(r: HostileRound, victim: SecureAggregation, statement: ContributorStatement):
    """Show the victim a statement; returns its consistency signature (as the attacker receives it)."""
    r.put(AGG, SecAggKind.STATEMENT, statement.encode())
    victim.serve(0, 1, wait_ms=200)
    from crypto.secagg.wire import decode_signature

    (sig,) = [decode_signature(s[4]) for s in r.sent(SecAggKind.CONSISTENCY)]
    return sig


# ---------------------------------------------------------------------------------------------- both shares
@pytest.mark.slow
def test_aggregator_asking_for_both_shares_of_one_silo_is_refused_and_audited(arena):
    """First "silo-2 contributed" (the victim reveals its self-seed share), then "silo-2 dropped" (its mask-key
    share): with both, the aggregator would strip every mask off silo-2's upload. Nothing leaves for the second."""
    r, victim = _agreed(arena)
    everyone = r.statement(JOB4)
    mine = _signed_by_victim(r, victim, everyone)
    r.put(AGG, SecAggKind.REQUEST, r.request(everyone, ["silo-2", "silo-3"], [mine]))
    victim.serve(0, 1, wait_ms=200)
    (first,) = r.sent(SecAggKind.ANSWER)
    revealed = {(s.silo, s.kind) for s in decode_response(first[4]).shares}
    assert (r.fp("silo-2"), "self") in revealed
    # the second request: silo-2 "dropped", signed by the two other contributors
    dropped = r.statement(["silo-1", "silo-3", "silo-4"])
    r.put(AGG, SecAggKind.REQUEST, r.request(dropped, ["silo-3", "silo-4"]))
    victim.serve(0, 1, wait_ms=200)
    assert len(r.sent(SecAggKind.ANSWER)) == 1, "the victim answered the second request"
    refused = [x for x in r.audit("secagg_refused") if x["details"]["step"] == "unmask"]
    assert refused and refused[-1]["details"]["refusal"] == BothSharesRefused.__name__
    assert "already revealed" in refused[-1]["details"]["reason"]


@pytest.mark.slow
def test_restarted_silo_never_answers_one_session_twice_differently(arena):
    """The victim answers, its process restarts (a fresh object on the same directory), and the aggregator asks
    again with silo-2 "dropped". Five silos (t = 3), so the second request carries the three consistency
    signatures it needs: only the responder's memory, on disk before the first answer left, stops it."""
    r, victim = _agreed(arena, JOB5)
    everyone = r.statement(JOB5)
    mine = _signed_by_victim(r, victim, everyone)
    r.put(AGG, SecAggKind.REQUEST, r.request(everyone, ["silo-2", "silo-3"], [mine]))
    victim.serve(0, 1, wait_ms=200)
    assert len(r.sent(SecAggKind.ANSWER)) == 1
    restarted = r.victim()
    dropped = r.statement(["silo-1", "silo-3", "silo-4", "silo-5"])
    r.put(AGG, SecAggKind.REQUEST, r.request(dropped, ["silo-3", "silo-4", "silo-5"]))
    restarted.serve(0, 1, wait_ms=200)
    assert len(r.sent(SecAggKind.ANSWER)) == 1, "the restarted silo answered a second, different request"
    refused = [x for x in r.audit("secagg_refused") if x["details"]["step"] == "unmask"]
    assert refused and refused[-1]["details"]["refusal"] == BothSharesRefused.__name__
