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
from crypto.compact_masked import mask_length_for
from crypto.endorsement import TrustAnchors
from crypto.secagg.errors import BothSharesRefused
from crypto.secagg.graph import neighbour_graph, round_graph_seed
from crypto.secagg.keys import Advertisement, Roster, RoundKeys, advertise, sign_bytes
from crypto.secagg.masking import share_secrets
from crypto.secagg.simulation import Member
from crypto.secagg.unmask import ContributorStatement, StatementSignature, _consistency_bytes, make_request
from crypto.secagg.wire import decode_response, encode_request
from protocol import cipherfed_pb2 as pb
from protocol import cipherfed_pb2_grpc as pbg
from protocol.jobspec import parse_job_spec, secagg_policy
from protocol.secagg import RosterEntry, RosterMessage, encode_roster, round_context, session_number
from protocol.version import __version__
from protocol.vocabulary import AGGREGATOR_RECIPIENT, SecAggKind
from silo_node.client import AggregatorClient
from silo_node.relay import Relay
from silo_node.secagg_round import (
    MAX_BLOCKING_WAIT_S,
    AgreementPending,
    SecAggCredentials,
    SecAggRefused,
    SecureAggregation,
)
from tests.helpers import aggregator_records, rpc_code, serve_as_aggregator, wait_for

SILOS = [f"silo-{i}" for i in range(1, 12)]  # silo-10: never a participant; silo-11: revoked
JOB4 = SILOS[:4]
JOB5 = SILOS[:5]
JOB9 = SILOS[:9]
VICTIM = "silo-1"
OUTSIDER = "silo-10"
REVOKED = "silo-11"
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
                job_id=request.job_id,
                sender=request.sender,
                kind=request.kind,
                seq=request.seq,
                payload=payload,
                last=True,
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
    members = {n: Member(n, pki.load_certificate(c.nodes[n].cert), pki.load_private_key(c.nodes[n].key)) for n in SILOS}
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

    def signature_of(self, name: str, statement: ContributorStatement) -> StatementSignature:
        """Silo ``name``'s consistency signature, as a colluder signs whatever the aggregator shows it."""
        member = self.arena.members[name]
        return StatementSignature(member.fingerprint, sign_bytes(member.key, _consistency_bytes(statement)))

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


# ---------------------------------------------------------------------------------------------- hostile rosters
def _entry(r: HostileRound, name: str, cert_of: str | None = None, advert: Advertisement | None = None) -> RosterEntry:
    """A roster entry named ``name`` with the certificate of ``cert_of`` and an advert (theirs, for this session)."""
    holder = r.arena.members[cert_of or name]
    if advert is None:
        advert = advertise(RoundKeys.generate(), r.context, holder.cert, holder.key)
    return RosterEntry(name, _pem(holder.cert), advert.to_bytes())


def _other_session(r: HostileRound, name: str, job_id: str | None = None, attempt: int = 1) -> Advertisement:
    member = r.arena.members[name]
    context = round_context(r.context.consortium, job_id or r.job_id, 0, attempt)
    return advertise(RoundKeys.generate(), context, member.cert, member.key)


def _swap(entries: list[RosterEntry], name: str, new: RosterEntry) -> list[RosterEntry]:
    return [new if e.name == name else e for e in entries]


ROSTERS: dict[str, tuple[Callable[[HostileRound, list[RosterEntry]], list[RosterEntry]], str]] = {
    # a consortium silo that is not a participant of this job takes silo-4's place
    "non-participant": (lambda r, e: _swap(e, "silo-4", _entry(r, OUTSIDER)), "is not a participant's own"),
    # the outsider's certificate under a participant's name
    "renamed": (lambda r, e: _swap(e, "silo-4", _entry(r, "silo-4", OUTSIDER)), "is not a participant's own"),
    # the aggregator's own certificate (role aggregator) as a silo: the attacker holds that key
    "other-role": (
        lambda r, e: _swap(
            e,
            "silo-4",
            RosterEntry(
                "silo-4",
                _pem(r.arena.aggregator.cert),
                advertise(RoundKeys.generate(), r.context, r.arena.aggregator.cert, r.arena.aggregator.key).to_bytes(),
            ),
        ),
        "has role 'aggregator'; this needs silo",
    ),  # fmt: skip
    "twice": (lambda r, e: [*e[:3], e[1]], "lists 'silo-2' twice"),
    # silo-2's genuine advert of another attempt of this round, and of another job
    "replayed-attempt": (
        lambda r, e: _swap(e, "silo-2", _entry(r, "silo-2", advert=_other_session(r, "silo-2", attempt=2))),
        "replayed from another round or job",
    ),
    "replayed-job": (
        lambda r, e: _swap(e, "silo-2", _entry(r, "silo-2", advert=_other_session(r, "silo-2", "job-9999"))),
        "replayed from another round or job",
    ),
    # silo-3's advert under silo-2's certificate (the attacker picks whose keys the victim masks with)
    "foreign-advert": (
        lambda r, e: _swap(e, "silo-2", RosterEntry("silo-2", e[1].cert_pem, e[2].advert)),
        "names another sender than the certificate",
    ),
    "victim-left-out": (lambda r, e: e[1:], "leaves this silo out"),
    "below-min-participants": (lambda r, e: e[:2], "lists 2 silos; this job needs at least 3"),
}


def _refused_at_agreement(r: HostileRound, words: str) -> None:
    victim = r.victim()
    with pytest.raises(SecAggRefused) as info:
        victim.agree(0, 1)
    refused = r.audit("secagg_refused")
    assert refused and refused[-1]["details"]["step"] == "agreement", refused
    assert words in refused[-1]["details"]["reason"], refused[-1]["details"]["reason"]
    assert words in str(info.value)
    assert not r.sent(SecAggKind.SHARES), "the victim sent shares of its secrets to a hostile roster"
    assert not r.audit("secagg_roster_verified")


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(ROSTERS))
def test_hostile_roster_is_refused_before_any_share_leaves(arena, attack):
    tamper, words = ROSTERS[attack]
    job_id, text = arena.job()
    r = HostileRound(arena, job_id, text, JOB4)
    r.serve_setup(lambda entries: tamper(r, entries))
    _refused_at_agreement(r, words)


@pytest.mark.slow
def test_roster_with_a_revoked_participant_is_refused(arena):
    """silo-11's certificate is revoked after the job was written: its (validly signed) advert is refused."""
    participants = [*JOB4[:3], REVOKED]
    job_id, text = arena.job(participants)
    pki.revoke(arena.consortium.ca_dir, arena.members[REVOKED].cert.serial_number)
    r = HostileRound(arena, job_id, text, participants)
    r.serve_setup()
    _refused_at_agreement(r, "is revoked")


# ---------------------------------------------------------------------------------------------- statements
@pytest.mark.slow
def test_statement_over_only_the_victims_neighbourhood_is_refused(arena):
    """Sparse graph (9 silos, 2 neighbours each, t = 2). An answer needs the consistency signatures of t
    contributors and of a majority of the roster: that majority (5 of 9) is what stops a split view across
    neighbourhoods. A statement whose roster is only the victim's neighbourhood (its neighbours and theirs,
    so that every secret it holds shares of still has t holders among the contributors) needs
    max(2, 5 // 2 + 1) = 3: the victim's own signature and two colluders'. The silo refuses any statement
    that does not split this session's whole verified roster, before signing it: nothing is signed or answered."""
    r, victim = _agreed(arena, JOB9, "neighbours = 2")
    names = {r.fp(n): n for n in JOB9}
    near = {r.fp(VICTIM)} | r.graph[r.fp(VICTIM)]
    near |= {x for fp in list(near) for x in r.graph[fp]}
    local_names = sorted(names[fp] for fp in near)
    assert len(local_names) < len(JOB9) // 2 * 2, local_names  # a minority's majority
    colluders = [n for n in local_names if n != VICTIM][:2]
    local = r.statement(local_names, roster=local_names)
    r.put(AGG, SecAggKind.STATEMENT, local.encode())
    victim.serve(0, 1, wait_ms=200)
    signed = r.sent(SecAggKind.CONSISTENCY)
    if signed:  # (only without the defence) the attack goes on: the victim's and one colluder's signatures
        from crypto.secagg.wire import decode_signature

        mine = decode_signature(signed[0][4])
        r.put(AGG, SecAggKind.REQUEST, r.request(local, colluders, [mine]))
        victim.serve(0, 1, wait_ms=200)
    assert not r.sent(SecAggKind.ANSWER), "the victim answered for a statement over a part of the roster"
    assert not signed, "the victim signed a statement over a part of the roster"
    refused = [x for x in r.audit("secagg_refused") if x["details"]["step"] == "statement"]
    assert refused and "not this session's whole roster" in refused[-1]["details"]["reason"]


# ---------------------------------------------------------------------------------------------- too few survivors
def _compact_consortium(
    directory: Path,
    names: list[str],
    running: list[str],
    columns: int,
    rows: int,
    seed: int,
    env: dict[str, dict[str, str]] | None = None,
) -> tuple[LocalConsortium, str, list[str]]:
    """A provisioned consortium with a compact key; ``running`` have data and a node process (``env``: the
    extra environment of each, e.g. a fault), the others only their certificates (driven by hand)."""
    c = LocalConsortium(directory, names)
    c.provision()
    fingerprint = c.add_he_key("compact")
    cols = [f"x{i}" for i in range(columns)]
    rng = np.random.default_rng(seed)
    for name in running:
        x = rng.normal(size=(rows, columns))
        c.write_data(name, x, (x[:, 0] > 0).astype(np.int64), cols)
    c.write_aggregator_config()
    c.start_aggregator()
    for name in running:
        c.write_node_config(name)
        c.start_node(name, env=(env or {}).get(name))
    c.write_admin_config()
    return c, fingerprint, cols


@pytest.mark.slow
def test_fewer_than_threshold_plus_one_survivors_fail_the_attempt_and_nothing_is_released(tmp_path_factory):
    """Four real silos, t = 2: silo-3 and silo-4 stop after mask agreement, so only two upload (< t + 1 = 3).
    The masks of two contributors cannot be removed without revealing one through the other: the attempt fails
    with the threshold named, no aggregate is written, and the round is retried under a new session that the
    restarted silos join and complete."""
    from silo_node.faults import FAULT_EXIT_CODE, FAULT_STOP_AFTER_AGREEMENT

    stopping = ("silo-3", "silo-4")
    c, fingerprint, columns = _compact_consortium(
        tmp_path_factory.mktemp("secagg-few"), JOB4, JOB4, 6, 60, 5,
        env={name: {FAULT_STOP_AFTER_AGREEMENT: "0"} for name in stopping},
    )  # fmt: skip
    spec = job_toml(
        "few", JOB4, fingerprint, columns, he_profile="compact", scaling="local", rounds=1, min_silos=2,
        round_timeout_s=30, max_round_retries=3, compact="weight_cap = 60",
        secagg="setup_timeout_s = 25\nunmask_timeout_s = 10",
    )  # fmt: skip
    stub = c.stub("coordinator")
    try:  # every node polls before the job exists: a slow start on a busy machine must not look like a dropout
        wait_for(lambda: all((c.nodes[n].dir / "state" / "heartbeat").exists() for n in JOB4), what="nodes")
        job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
        for name in stopping:
            process = c.processes[name]
            wait_for(lambda p=process: p.poll() is not None, what=f"{name} to stop after mask agreement")
            assert process.returncode == FAULT_EXIT_CODE
        failed = wait_for(lambda: aggregator_records(c, "secagg_failed", job_id), what="secagg_failed")
        assert "threshold + 1 = 3" in failed[0]["details"]["reason"], failed
        assert "nothing released" in failed[0]["details"]["reason"]
        assert failed[0]["details"]["session"] == 1  # round 0, attempt 1
        # refused before unmasking: no survivor was asked for (or revealed) a share of that session
        for event in ("secagg_statement_sent", "secagg_unmask_requested", "secagg_answer_received"):
            assert not [r for r in aggregator_records(c, event, job_id) if r["details"]["session"] == 1], event
        round_failed = aggregator_records(c, "round_failed", job_id)
        assert round_failed and round_failed[0]["details"]["attempt"] == 1
        assert "threshold" in round_failed[0]["details"]["reason"]
        # nothing released for that attempt: no aggregate file, no record, nothing to download
        assert not aggregator_records(c, "aggregate_released", job_id)
        assert not list((c.agg_dir).rglob(f"{job_id}/round-00000.agg"))
        code, _ = rpc_code(
            lambda: list(c.stub("silo-1").DownloadAggregate(pb.AggregateRequest(job_id=job_id, round=0), timeout=30))
        )
        assert code != grpc.StatusCode.OK
        status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)  # the aggregator keeps serving
        assert status.status == "running"
        for name in stopping:  # back without the fault: the retry is a new session with fresh keys
            c.start_node(name)
        final = wait_for(
            lambda: (s := stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)).status != "running" and s,
            what=f"job {job_id}",
        )
        assert final.status == "completed", final.reason
        opened = [r["details"]["session"] for r in aggregator_records(c, "secagg_session_opened", job_id)]
        assert opened == list(range(1, len(opened) + 1)) and len(opened) >= 2  # round 0, attempts 1, 2, ...
        released = aggregator_records(c, "aggregate_released", job_id)
        assert len(released) == 1 and sorted(released[0]["details"]["contributors"]) == JOB4
        (unmasked,) = aggregator_records(c, "secagg_unmasked", job_id)
        assert unmasked["details"]["session"] == opened[-1] != 1
    finally:
        c.stop_all()


# ---------------------------------------------------------------------------------------------- hostile members
LIVE = ["silo-1", "silo-2", "silo-3", "silo-4", "silo-5"]  # silo-4: the hostile member (by hand); silo-5: outsider
LIVE_JOB = LIVE[:4]


def _send(c: LocalConsortium, who: str, job_id: str, to: str, kind: str, seq: int, payload: bytes) -> pb.Ack:
    message = pb.RelayMessage(job_id=job_id, to=to, kind=str(kind), seq=seq, payload=payload, last=True)
    return c.stub(who).Send(iter([message]), timeout=30)


def _refused(c: LocalConsortium, who: str, job_id: str, to: str, kind: str, seq: int, payload: bytes) -> str:
    code, details = rpc_code(lambda: _send(c, who, job_id, to, kind, seq, payload))
    return f"{code.name}: {details}"


def _hand_member(c: LocalConsortium, name: str, job_id: str, spec_text: str) -> SecureAggregation:
    """The member's own round protocol object over a real relay to the real aggregator (its audit log on disk)."""
    node = c.nodes[name]
    key, cert = pki.load_private_key(node.key), pki.load_certificate(node.cert)
    ca = pki.load_certificate(c.ca_dir / "ca.crt")
    trust = TrustAnchors(ca, pki.RevocationList(c.ca_dir / "crl.pem", ca))
    relay = Relay(AggregatorClient(f"127.0.0.1:{c.port}", c.tls(name), "localhost"), job_id, lambda: False, 60)
    events = AuditSink(AuditLog(node.dir / "state" / "audit.jsonl", key, cert, __version__), f"test.{name}")
    directory = node.dir / "state" / "jobs" / job_id
    directory.mkdir(parents=True, exist_ok=True)
    spec = parse_job_spec(spec_text)
    return SecureAggregation(
        job_id, spec, name, SecAggCredentials(c.consortium, key, cert, trust), relay, events, directory
    )


def _masked_upload(c: LocalConsortium, name: str, job_id: str, spec_text: str, mask, columns: int) -> None:
    """A real masked compact upload of a logistic-regression delta, signed with the member's key."""
    from collections import OrderedDict

    from crypto.compact import CompactEncryptor
    from crypto.contributors import own_tag
    from crypto.keys import load_secret_key_set
    from crypto.signing import sign_digest, update_digest
    from crypto.wrapping import unwrap_key
    from protocol.jobspec import compact_params
    from protocol.messages import manifest_to_proto, upload_messages

    node, fp = c.nodes[name], c.fingerprints["compact"]
    key, cert = pki.load_private_key(node.key), pki.load_certificate(node.cert)
    export = unwrap_key(
        (node.dir / "state" / "keys" / f"{fp}.wrapped").read_bytes(), key, cert,
        consortium=c.consortium, job="consortium", recipient=name,
    )  # fmt: skip
    encryptor = CompactEncryptor(load_secret_key_set(export), compact_params(parse_job_spec(spec_text)))
    delta = OrderedDict([("weight", np.full((1, columns), 0.01)), ("bias", np.full(1, -0.01))])
    tags = own_tag(encryptor.tag_key, job_id, 0, len(LIVE_JOB), LIVE_JOB.index(name))
    batch = encryptor.encrypt_update(delta, 40, tags=tags, mask=mask)
    digest = update_digest(job_id, 0, batch.manifest.fingerprint, batch.manifest.digest(), "")
    header = pb.UploadHeader(
        job_id=job_id, round=0, manifest=manifest_to_proto(batch.manifest), audit_head="",
        signature=sign_digest(key, digest),
    )  # fmt: skip
    c.stub(name).Upload(upload_messages(header, batch.chunks), timeout=120)


@pytest.mark.slow
def test_hostile_member_messages_are_refused_and_the_round_goes_on(tmp_path_factory):
    """Three real silos and a hostile member (silo-4, driven by hand with its real certificate) plus an
    outsider (silo-5, a consortium silo that is not a participant). Every message below is refused with
    its reason, audited as rpc_refused, and the session goes on: silo-4 then plays honestly (its own
    round protocol object over the real relay) and the round is unmasked and released with all four."""
    from crypto.secagg.unmask import UnmaskResponse
    from crypto.secagg.wire import encode_response, encode_signature

    c, fingerprint, columns = _compact_consortium(
        tmp_path_factory.mktemp("secagg-members"), LIVE, LIVE_JOB[:3], 4, 40, 9
    )
    spec = job_toml(
        "members", LIVE_JOB, fingerprint, columns, he_profile="compact", scaling="local", rounds=1, min_silos=3,
        round_timeout_s=120, compact="weight_cap = 60", secagg="setup_timeout_s = 60\nunmask_timeout_s = 8",
    )  # fmt: skip
    stub = c.stub("coordinator")
    try:
        wait_for(lambda: all((c.nodes[n].dir / "state" / "heartbeat").exists() for n in LIVE_JOB[:3]), what="nodes")
        job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
        wait_for(lambda: len(aggregator_records(c, "secagg_advert_received", job_id)) == 3, what="3 adverts")
        context = round_context(c.consortium, job_id, 0, 1)
        seq = context.round
        me = pki.load_private_key(c.nodes["silo-4"].key), pki.load_certificate(c.nodes["silo-4"].cert)
        other = pki.load_private_key(c.nodes["silo-3"].key), pki.load_certificate(c.nodes["silo-3"].cert)
        outsider = pki.load_private_key(c.nodes["silo-5"].key), pki.load_certificate(c.nodes["silo-5"].cert)
        own = advertise(RoundKeys.generate(), context, me[1], me[0]).to_bytes()
        elsewhere = round_context(c.consortium, "job-elsewhere", 0, 1)
        before_roster = {
            "outsider's advert": (
                "silo-5", AGG, SecAggKind.ADVERT, seq, advertise(RoundKeys.generate(), context, outsider[1], outsider[0]).to_bytes(),
                "PERMISSION_DENIED: secure-aggregation messages are for the participants",
            ),
            "advert for another session": ("silo-4", AGG, SecAggKind.ADVERT, seq + 1, own, "FAILED_PRECONDITION: message is for session 2"),
            "advert replayed from another job": (
                "silo-4", AGG, SecAggKind.ADVERT, seq, advertise(RoundKeys.generate(), elsewhere, me[1], me[0]).to_bytes(),
                "INVALID_ARGUMENT: payload: advert refused: advertisement is for",
            ),
            "another silo's advert": (
                "silo-4", AGG, SecAggKind.ADVERT, seq, advertise(RoundKeys.generate(), context, other[1], other[0]).to_bytes(),
                "INVALID_ARGUMENT: payload: advert refused: advertisement names another sender",
            ),
            "garbage advert": ("silo-4", AGG, SecAggKind.ADVERT, seq, b"\x00\x00\x00\x05hello" * 3, "INVALID_ARGUMENT: payload: advert refused"),
            "oversized advert": ("silo-4", AGG, SecAggKind.ADVERT, seq, b"x" * 4096, "INVALID_ARGUMENT: payload: an advert of 4096 bytes; at most 1024"),
            "advert to a silo": ("silo-4", "silo-1", SecAggKind.ADVERT, seq, own, "PERMISSION_DENIED: 'sa-advert' messages go to the aggregator"),
            "a roster from a silo": ("silo-4", AGG, SecAggKind.ROSTER, seq, own, "INVALID_ARGUMENT: kind: 'sa-roster' is not a message a silo sends"),
            "shares before the roster": ("silo-4", "silo-1", SecAggKind.SHARES, seq, b"s" * 64, "FAILED_PRECONDITION: shares go out after the roster is fixed"),
            "consistency before a statement": ("silo-4", AGG, SecAggKind.CONSISTENCY, seq, b"s" * 64, "FAILED_PRECONDITION: no unmasking in progress"),
        }  # fmt: skip
        for what, (who, to, kind, s, payload, words) in before_roster.items():
            got = _refused(c, who, job_id, to, kind, s, payload)
            assert got.startswith(words), (what, got)
        assert not aggregator_records(c, "secagg_roster_sent", job_id)
        assert not aggregator_records(c, "secagg_failed", job_id)
        # an upload before silo-4 is in a roster (unmasked: nobody could ever remove its masks anyway)
        code, details = rpc_code(lambda: _masked_upload(c, "silo-4", job_id, spec, lambda v: v, len(columns)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "has not fixed this round's roster" in details, details
        # silo-4 now advertises honestly (its own protocol object): the roster goes out, shares are exchanged
        hand = _hand_member(c, "silo-4", job_id, spec)
        mask = hand.agree(0, 1)
        (roster,) = aggregator_records(c, "secagg_roster_sent", job_id)
        assert roster["details"]["roster"] == LIVE_JOB
        after_roster = {
            "a second advert": ("silo-4", AGG, SecAggKind.ADVERT, seq, own, "FAILED_PRECONDITION: this round's roster is already fixed"),
            "shares re-sent": ("silo-4", "silo-1", SecAggKind.SHARES, seq, b"s" * 64, "FAILED_PRECONDITION: silo-4 already sent its shares to silo-1"),
            "oversized shares": ("silo-4", "silo-2", SecAggKind.SHARES, seq, b"s" * 5000, "INVALID_ARGUMENT: payload: a share envelope of 5000 bytes"),
            "shares to itself": ("silo-4", "silo-4", SecAggKind.SHARES, seq, b"s" * 64, "PERMISSION_DENIED: 'silo-4' is not one of silo-4's share holders"),
            "shares to the outsider": ("silo-4", "silo-5", SecAggKind.SHARES, seq, b"s" * 64, "PERMISSION_DENIED: 'silo-5' is not one of silo-4's share holders"),
            "outsider's shares": ("silo-5", "silo-1", SecAggKind.SHARES, seq, b"s" * 64, "PERMISSION_DENIED: secure-aggregation messages are for the participants"),
        }  # fmt: skip
        for what, (who, to, kind, s, payload, words) in after_roster.items():
            got = _refused(c, who, job_id, to, kind, s, payload)
            assert got.startswith(words), (what, got)
        _masked_upload(c, "silo-4", job_id, spec, mask, len(columns))
        statement = wait_for(lambda: aggregator_records(c, "secagg_statement_sent", job_id), what="the statement")
        assert statement[0]["details"]["contributors"] == LIVE_JOB
        fp4 = pki.certificate_fingerprint(me[1])
        forged = StatementSignature(fp4, sign_bytes(me[0], b"a statement the aggregator never sent"))
        got = _refused(c, "silo-4", job_id, AGG, SecAggKind.CONSISTENCY, seq, encode_signature(forged))
        assert got.startswith("INVALID_ARGUMENT: payload: consistency signature: signature does not verify"), got
        not_mine = StatementSignature(pki.certificate_fingerprint(other[1]), forged.signature)
        got = _refused(c, "silo-4", job_id, AGG, SecAggKind.CONSISTENCY, seq, encode_signature(not_mine))
        assert got.startswith("PERMISSION_DENIED: a consistency signature names another signer"), got
        # silo-4 signs the statement it was sent; once the request is out, it answers for another contributor set
        request = pb.ReceiveRequest(job_id=job_id, kind=SecAggKind.STATEMENT, seq=seq, sender=AGG, wait_ms=5000)
        (sent,) = list(c.stub("silo-4").Receive(request, timeout=30))
        honest = StatementSignature(
            fp4, sign_bytes(me[0], _consistency_bytes(ContributorStatement.decode(sent.payload)))
        )
        _send(c, "silo-4", job_id, AGG, SecAggKind.CONSISTENCY, seq, encode_signature(honest))
        wait_for(lambda: aggregator_records(c, "secagg_unmask_requested", job_id), what="the unmask request")
        stale = UnmaskResponse(context, b"\x07" * 32, fp4, ())
        stale = UnmaskResponse(context, stale.statement_digest, fp4, (), sign_bytes(me[0], stale.signed_bytes()))
        got = _refused(c, "silo-4", job_id, AGG, SecAggKind.ANSWER, seq, encode_response(stale))
        assert got.startswith("INVALID_ARGUMENT: payload: the answer is for another session or contributor set"), got
        # silo-4 then stays silent: at the deadline its self mask is recovered from the three other silos' shares
        (unmasked,) = wait_for(lambda: aggregator_records(c, "secagg_unmasked", job_id), what="unmasking")
        assert unmasked["details"]["answers"] == 3 and unmasked["details"]["at_deadline"]
        status = wait_for(
            lambda: (s := stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)).status != "running" and s,
            what=f"job {job_id}",
        )
        assert status.status == "completed", status.reason
        (released,) = aggregator_records(c, "aggregate_released", job_id)
        assert sorted(released["details"]["contributors"]) == LIVE_JOB
        rows = [json.loads(line) for line in (c.agg_dir / "state" / "audit.jsonl").read_text().splitlines()]
        refusals = [r for r in rows if r["event"] == "rpc_refused" and r["details"].get("method") == "Send"]
        assert len(refusals) == len(before_roster) + len(after_roster) + 3
        assert {r["actor"] for r in refusals} == {"silo-4", "silo-5"}
    finally:
        c.stop_all()


@pytest.mark.slow
def test_participant_missing_from_the_roster_cannot_upload_and_the_others_complete(tmp_path_factory):
    """silo-4 never advertises keys (driven by hand, no process): the roster goes out at the setup deadline with
    the three others, silo-4's upload is refused (nobody could remove its masks), and the three complete the
    round. The silos wait for a roster published at the deadline (they would otherwise give up just as it
    is published, and sit out every attempt)."""
    c, fingerprint, columns = _compact_consortium(
        tmp_path_factory.mktemp("secagg-missing"), LIVE_JOB, LIVE_JOB[:3], 4, 40, 3
    )
    spec = job_toml(
        "missing", LIVE_JOB, fingerprint, columns, he_profile="compact", scaling="local", rounds=1, min_silos=3,
        round_timeout_s=90, max_round_retries=0, compact="weight_cap = 60",
        secagg="setup_timeout_s = 12\nunmask_timeout_s = 20",
    )  # fmt: skip
    stub = c.stub("coordinator")
    try:
        wait_for(lambda: all((c.nodes[n].dir / "state" / "heartbeat").exists() for n in LIVE_JOB[:3]), what="nodes")
        job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
        (roster,) = wait_for(lambda: aggregator_records(c, "secagg_roster_sent", job_id), what="the roster")
        assert roster["details"]["roster"] == LIVE_JOB[:3] and roster["details"]["why"] == "setup deadline reached"
        code, details = rpc_code(lambda: _masked_upload(c, "silo-4", job_id, spec, lambda v: v, len(columns)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert "silo-4 is not in this round's secure-aggregation roster" in details
        c.stub("silo-4").Decline(pb.DeclineRequest(job_id=job_id, round=0, reasons=["sits this round out"]), timeout=30)
        status = wait_for(
            lambda: (s := stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)).status != "running" and s,
            what=f"job {job_id}",
        )
        assert status.status == "completed", status.reason
        (released,) = aggregator_records(c, "aggregate_released", job_id)
        assert sorted(released["details"]["contributors"]) == LIVE_JOB[:3]
        for name in LIVE_JOB[:3]:
            rows = [json.loads(line) for line in (c.nodes[name].dir / "state" / "audit.jsonl").read_text().splitlines()]
            assert not [r for r in rows if r["event"] == "secagg_refused" and r.get("job") == job_id], name
    finally:
        c.stop_all()


@pytest.mark.slow
def test_oversized_statement_is_refused_unread_and_the_silo_goes_on(arena):
    """The aggregator streams a statement far longer than any roster needs: the silo stops reading at its
    bound, audits the refusal, signs nothing, and signs the honest statement that comes next."""
    from protocol.secagg import MAX_UNMASK_MESSAGE_BYTES

    r, victim = _agreed(arena)
    r.put(AGG, SecAggKind.STATEMENT, b"\0" * (MAX_UNMASK_MESSAGE_BYTES + 1))
    victim.serve(0, 1, wait_ms=200)
    assert not r.sent(SecAggKind.CONSISTENCY)
    refused = [x for x in r.audit("secagg_refused") if "exceeds" in x["details"]["reason"]]
    assert refused and refused[-1]["details"]["step"] == SecAggKind.STATEMENT
    _signed_by_victim(r, victim, r.statement(JOB4))  # the honest statement is still signed


@pytest.mark.slow
def test_a_retry_supersedes_a_session_whose_roster_never_comes(arena):
    """The aggregator never sends attempt 1's roster and opens attempt 2: the silo's one agreement worker
    stops waiting for the old roster and advertises for the new session at once, not after the old
    session's timeout (which held every later session up in a loaded CI run)."""
    job_id, text = arena.job()
    r = HostileRound(arena, job_id, text, JOB4)
    victim = r.victim()
    first, second = session_number(0, 1), session_number(0, 2)

    def adverts(session: int) -> list:
        return [s for s in arena.mailbox.sent_of(job_id, SecAggKind.ADVERT) if s[3] == session]

    victim.begin(0, 1)
    wait_for(lambda: adverts(first), 20, "the advert of attempt 1")
    started = time.time()
    victim.begin(0, 2)
    wait_for(lambda: adverts(second), 12, "the advert of attempt 2")
    assert time.time() - started < 12
    superseded = [x for x in r.audit("secagg_refused") if x["details"]["session"] == first]
    assert superseded and "superseded by round 0 attempt 2" in superseded[-1]["details"]["reason"]


# ---------------------------------------------------------------------------------------------- the node's loop
def test_an_aggregator_that_withholds_the_roster_does_not_hold_the_node(arena):
    """No roster ever comes. The upload path asks for the mask and gets "not yet" within the bound, not
    after the job's setup timeout (60 s here), so the node's poll loop, its other jobs and its heartbeat
    go on; when the node stops, the waiting agreement ends at its next relay poll and says why."""
    job_id, text = arena.job()
    r = HostileRound(arena, job_id, text, JOB4)
    victim = r.victim()
    for _ in range(2):  # asked again on the next poll: still not yet, and still no second advert
        started = time.monotonic()
        with pytest.raises(AgreementPending):
            victim.mask_for(0, 1)
        assert time.monotonic() - started < MAX_BLOCKING_WAIT_S + 1.0
    assert len(r.sent(SecAggKind.ADVERT)) == 1
    victim.close()
    victim.relay.client.close()  # as the stopping node does next: the waiting Receive is cancelled
    wait_for(lambda: r.audit("secagg_refused"), 10, "the agreement to end once the node stops")
    assert "the node stopped" in r.audit("secagg_refused")[-1]["details"]["reason"]


def test_an_aggregator_that_withholds_the_request_does_not_hold_the_node(arena):
    """After signing the contributor set the silo waits for the unmasking request at most the bound, not
    the job's unmask timeout; the request that comes later is answered on the next poll."""
    r, victim = _agreed(arena)
    everyone = r.statement(JOB4)
    r.put(AGG, SecAggKind.STATEMENT, everyone.encode())
    started = time.monotonic()
    victim.serve(0, 1)  # as the node calls it right after its upload
    assert time.monotonic() - started < MAX_BLOCKING_WAIT_S + 1.5
    from crypto.secagg.wire import decode_signature

    (mine,) = [decode_signature(s[4]) for s in r.sent(SecAggKind.CONSISTENCY)]
    assert not r.sent(SecAggKind.ANSWER)
    r.put(AGG, SecAggKind.REQUEST, r.request(everyone, ["silo-2", "silo-3"], [mine]))
    victim.serve(0, 1)
    assert len(r.sent(SecAggKind.ANSWER)) == 1


def test_an_agreement_that_failed_is_not_raised_again_on_every_poll(arena, monkeypatch):
    """The aggregator became unreachable after this silo's keys were made: that step fails once (the node
    backs off and polls again). The next poll does not find the same stored error forever; it sits the
    session out, audited, and never advertises a second set of keys for it."""
    job_id, text = arena.job()
    r = HostileRound(arena, job_id, text, JOB4)
    victim = r.victim()
    honest_send = victim.relay.send

    def unreachable(*args, **kwargs):
        raise ConnectionError("aggregator unreachable")

    monkeypatch.setattr(victim.relay, "send", unreachable)
    with pytest.raises(ConnectionError):
        victim.mask_for(0, 1)
    monkeypatch.setattr(victim.relay, "send", honest_send)
    assert victim.mask_for(0, 1) is None
    assert not r.sent(SecAggKind.ADVERT)
    refused = r.audit("secagg_refused")
    assert refused and "its keys are not reused" in refused[-1]["details"]["reason"]


# ---------------------------------------------------------------------------------------------- the released sum
@pytest.mark.slow
def test_a_silo_removes_the_masks_only_with_secrets_that_match_the_roster_it_verified(arena):
    """The aggregator releases the sum still masked, with the secrets the unmasking revealed. The victim expands
    the correction itself: from honest secrets it gets exactly minus the sum of the self masks (checked here
    against the PRG directly); a wrong seed, another job's record or none at all is refused; and a silo that
    lost its session (it sat the session out) verifies the record's roster against the CA instead."""
    from crypto.compact import CompactEncryptor
    from crypto.keys import generate_key_set
    from crypto.secagg.errors import SecAggError
    from crypto.secagg.prg import expand
    from crypto.secagg.unmask import RevealedSecrets
    from crypto.secagg.wire import decode_keys
    from protocol.jobspec import compact_params
    from protocol.secagg import UnmaskingRecord, encode_unmasking

    r, victim = _agreed(arena)
    params = compact_params(r.spec)
    manifest = CompactEncryptor(generate_key_set("compact"), params).encrypt_update(
        {"v": np.zeros(500)}, 5, mask=lambda v: v
    ).manifest
    length, w = mask_length_for(params, manifest), params.mask_bits
    session = r.dir / "secagg" / f"session-{r.seq:012d}"
    seeds = {r.fp(n): r.keys[n].self_seed for n in JOB4 if n != VICTIM}
    seeds[r.fp(VICTIM)] = decode_keys((session / "keys.bin").read_bytes()).self_seed
    assert r.roster is not None
    published = encode_roster(
        RosterMessage(_pem(arena.aggregator.cert), r.honest_entries(r.roster.advert(r.fp(VICTIM)).to_bytes()))
    )

    def record(secrets: dict[str, bytes], statement: ContributorStatement | None = None, roster=published) -> bytes:
        return encode_unmasking(UnmaskingRecord(roster, RevealedSecrets(statement or r.statement(JOB4), secrets, {})))

    total = sum((expand(s, length, w) for s in seeds.values()), np.zeros(length, dtype=np.uint64))
    expected = (np.uint64(0) - total) & np.uint64((1 << w) - 1)
    assert np.array_equal(victim.correction_for(0, record(seeds), manifest), expected)
    elsewhere = ContributorStatement.make(round_context(arena.consortium.consortium, "job-elsewhere", 0, 1),
                                          [r.fp(n) for n in JOB4], [r.fp(n) for n in JOB4])  # fmt: skip
    refusals = {
        "does not match its commitment": record({**seeds, r.fp("silo-2"): bytes(32)}),
        "another job or round": record(seeds, elsewhere),
        "without its unmasking record": b"",
    }
    for reason, unmasking in refusals.items():
        with pytest.raises(SecAggError, match=reason):
            victim.correction_for(0, unmasking, manifest)
    (session / "roster.bin").rename(session / "roster.kept")  # as if it never joined: it has only the record
    stranger = r.victim()
    assert np.array_equal(stranger.correction_for(0, record(seeds), manifest), expected)
    forged = encode_roster(RosterMessage(_pem(arena.aggregator.cert), [_entry(r, "silo-2", cert_of="silo-3")]
                                         + r.honest_entries(b"")[2:]))  # fmt: skip
    with pytest.raises(SecAggError, match="roster entry 'silo-2' refused|not a participant's own certificate"):
        stranger.correction_for(0, record(seeds, roster=forged), manifest)
    (session / "roster.kept").rename(session / "roster.bin")
    # bound to what the victim saw: the statement it signed, and the newest attempt of the round it joined
    _signed_by_victim(r, victim, r.statement(JOB4))
    assert np.array_equal(victim.correction_for(0, record(seeds), manifest), expected)
    without_2 = r.statement(["silo-1", "silo-3", "silo-4"])  # genuine secrets of a statement it never signed
    key_2 = {r.fp("silo-2"): r.keys["silo-2"].mask_private_bytes()}
    seeds_134 = {fp: seed for fp, seed in seeds.items() if fp != r.fp("silo-2")}
    unsigned = encode_unmasking(UnmaskingRecord(published, RevealedSecrets(without_2, seeds_134, key_2)))
    with pytest.raises(SecAggError, match="not the contributor statement it signed"):
        victim.correction_for(0, unsigned, manifest)
    (r.dir / "secagg" / f"session-{r.seq + 1:012d}").mkdir()  # it went on to join attempt 2 of the round
    with pytest.raises(SecAggError, match="not the newest of round 0 this silo joined"):
        victim.correction_for(0, record(seeds), manifest)
