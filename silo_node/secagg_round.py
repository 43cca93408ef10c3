"""Secure aggregation at a silo: agree on masks before uploading, then answer the unmasking, once.

For one attempt of one round (its session):

1. ``agree``: generate round keys (kept in a 0600 file), send the signed advert, wait for the
   aggregator's roster and check every entry against the consortium CA (chain, expiry, revocation,
   role ``silo``, the name in the certificate is a participant of the job spec, the advert is
   signed by that certificate for this session); build the share graph from the job spec (never
   the aggregator's word), send each share holder its encrypted shares, open the shares sent to
   this silo. Returns the ``mask`` function the compact encryptor applies to the update.
2. ``serve`` (on every poll while the round unmasks): sign the contributor statement if it matches
   what this silo saw, then answer the unmasking request: one share per peer, the self-seed share of
   a contributor or the mask-key share of a dropped silo, never both for one silo
   (``crypto.secagg.unmask.ShareResponder``; its memory is written to disk before any answer leaves).
3. ``correction_for`` (when the masked sum is released): check the secrets the aggregator revealed
   against the roster this silo verified, and expand the correction it adds after decryption.

A refusal (a roster, statement or request that breaks the rules) is audited with its reason and
nothing is revealed; the silo then sits the round out. Every step is audited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from audit.events import EventSink
from crypto.compact_masked import mask_length_for
from crypto.endorsement import TrustAnchors
from crypto.errors import CryptoError
from crypto.packing import Manifest
from crypto.pki import PKIError, certificate_fingerprint, verify_certificate, write_secret_file
from crypto.secagg.encoding import RoundContext
from crypto.secagg.errors import SecAggError, UnmaskRefused
from crypto.secagg.graph import neighbour_graph, round_graph_seed
from crypto.secagg.keys import Advertisement, Roster, RoundKeys, advertise, verify_advertisement
from crypto.secagg.masking import apply_pad, mask_pad, share_secrets
from crypto.secagg.transport import ShareBundle, ShareEnvelope, open_shares
from crypto.secagg.unmask import ContributorStatement, RoundMaterial, ShareResponder, mask_correction
from crypto.secagg.wire import (
    decode_material,
    decode_request,
    encode_keys,
    encode_material,
    encode_response,
    encode_signature,
)
from protocol.jobspec import JobSpec, compact_params, secagg_policy, secagg_table
from protocol.secagg import (
    ATTEMPTS_PER_ROUND,
    MAX_ROSTER_BYTES,
    MAX_SHARES_BYTES,
    MAX_UNMASK_MESSAGE_BYTES,
    decode_roster,
    decode_unmasking,
    round_context,
)
from protocol.vocabulary import AGGREGATOR_RECIPIENT, SecAggKind
from silo_node.node_files import write_atomic
from silo_node.relay import Relay, VerticalError
from silo_node.secagg_peers import Peers, stored_peers

Mask = Callable[[np.ndarray], np.ndarray]
# The longest one secure-aggregation step holds the node's poll loop (and so its other jobs, its
# heartbeat and its shutdown): keys not agreed yet, or a request not sent yet, are looked for again
# on the next poll. The aggregator wakes the polls whenever it sends a roster or a request.
MAX_BLOCKING_WAIT_S = 2.0
ROSTER_GRACE_S = 20.0  # beyond the setup timeout: the aggregator's deadline tick and one relay long-poll


@dataclass(frozen=True)
class SecAggCredentials:
    """This node's certificate and key (it signs adverts, shares and answers) and what it trusts peers by."""

    consortium: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    trust: TrustAnchors


class SecAggRefused(Exception):
    """This silo will not take part in this session (the reason is audited); it sits the round out."""


class AgreementPending(Exception):
    """The session's keys are not agreed yet: upload on a later poll (nothing is refused)."""


class SecureAggregation:
    """One job's secure-aggregation sessions at this silo (state under ``directory/secagg``)."""

    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        name: str,
        credentials: SecAggCredentials,
        relay: Relay,
        events: EventSink,
        directory: Path,
    ) -> None:
        self.job_id, self.spec, self.name = job_id, spec, name
        self.credentials, self.relay, self.events = credentials, relay, events
        self.dir = directory / "secagg"
        self.policy = secagg_policy(spec)
        self.params = compact_params(spec)
        self.me = certificate_fingerprint(credentials.certificate)
        self._unmask_timeout_s = secagg_table(spec).unmask_timeout_s
        # The aggregator publishes the roster at its setup deadline when a participant never advertises;
        # a wait of exactly the setup timeout from this silo's advert races that publication (and the
        # relay's long-poll steps), and a lost race makes every silo sit out the attempt.
        relay.timeout_s += ROSTER_GRACE_S
        self.responder = ShareResponder(self.me, credentials.private_key)
        self._agreements: dict[tuple[int, int], Future[Mask]] = {}
        self._wanted: tuple[int, int] | None = None  # the newest session this silo was asked to join
        self._closed = False  # the node is stopping: waits for rosters and shares end
        # The newest agreed session's material and verified roster, kept so that serve() (called on
        # every poll while the round unmasks) does not re-read and re-parse them from disk each time.
        self._agreed: tuple[int, RoundMaterial, Peers] | None = None
        self._mask_length: int | None = None  # of the last masked update: the next pad is expanded in advance
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"secagg-{job_id}")
        state = self.dir / "responder.json"
        if state.exists():
            self.responder.load_state(json.loads(state.read_text()))

    # ------------------------------------------------------------------ files
    def _session_dir(self, context: RoundContext) -> Path:
        return self.dir / f"session-{context.round:012d}"

    def _record(self, event: str, context: RoundContext, **details: Any) -> None:
        self.events.record(event, self.name, job=self.job_id, session=context.round, **details)

    def _save_responder(self) -> None:
        """Persisted before any signature or answer leaves: a restart cannot make this silo answer twice."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "responder.json", json.dumps(self.responder.export_state()))

    # ------------------------------------------------------------------ 1. mask agreement
    def begin(self, round_index: int, attempt: int) -> None:
        """Start this session's agreement in the background (once): it needs no model, so it runs while the
        silo trains, and the round waits for the longer, not for both."""
        key = (round_index, attempt)
        self._wanted = key  # an agreement for an older session stops waiting (see agree)
        for old in [k for k, f in self._agreements.items() if k != key and f.done()]:
            del self._agreements[old]
        if key not in self._agreements:
            self._agreements[key] = self._worker.submit(self.agree, round_index, attempt)

    def mask_for(self, round_index: int, attempt: int, wait_s: float = MAX_BLOCKING_WAIT_S) -> Mask | None:
        """The session's mask once agreement is done; None if this silo sits the session out (audited).

        Raises AgreementPending if the agreement is still waiting after ``wait_s`` (a roster or shares the
        aggregator has not sent): the caller's poll loop goes on and asks again.
        """
        self.begin(round_index, attempt)
        key = (round_index, attempt)
        done, _ = wait([self._agreements[key]], timeout=wait_s)
        if not done:
            raise AgreementPending(f"session {round_index}/{attempt}: keys not agreed after {wait_s} s")
        agreement = self._agreements.pop(key)  # whatever it ended with, a later poll does not see it again
        try:
            return agreement.result()
        except SecAggRefused:
            return None

    def close(self) -> None:
        """The node is stopping: a waiting agreement ends at its next relay poll (audited as refused)."""
        self._closed = True
        self._worker.shutdown(wait=False, cancel_futures=True)

    def agree(self, round_index: int, attempt: int) -> Mask:
        """Advertise, verify the roster, exchange shares; the mask for this session's upload.

        Raises SecAggRefused (audited) when this silo cannot take part in the session safely.
        """
        context = round_context(self.credentials.consortium, self.job_id, round_index, attempt)
        key = (round_index, attempt)
        # A retry or the next round supersedes this session: stop waiting for its roster or shares, or
        # the one agreement worker would hold the new session up until this one's timeout.
        self.relay.should_stop = lambda: self._closed or self._wanted not in (None, key)
        where = self._session_dir(context)
        if where.exists():  # a restart, or an agreement of this session that ended in an error
            reason = f"session {context.round} was started before; its keys are not reused: sitting it out"
            self._record("secagg_refused", context, step="agreement", reason=reason)
            raise SecAggRefused(reason)
        where.mkdir(parents=True)
        keys = RoundKeys.generate()
        write_secret_file(where / "keys.bin", encode_keys(keys))
        advert = advertise(keys, context, self.credentials.certificate, self.credentials.private_key)
        seq = context.round
        try:
            self.relay.send(AGGREGATOR_RECIPIENT, SecAggKind.ADVERT, seq, [advert.to_bytes()])
            self._record("secagg_advertised", context, round=round_index, attempt=attempt)
            roster_bytes = self.relay.receive_blob(AGGREGATOR_RECIPIENT, SecAggKind.ROSTER, seq, MAX_ROSTER_BYTES)
            peers = self._verified_roster(context, roster_bytes)
            graph = neighbour_graph(list(peers.names), round_graph_seed(context), self.policy.neighbours)
            holders = graph[self.me]
            envelopes = share_secrets(
                context, keys, self.me, peers.roster, holders, self.policy.threshold, self.credentials.private_key
            )
            self.relay.send_each(SecAggKind.SHARES, seq, [(peers.names[e.recipient], e.to_bytes()) for e in envelopes])
            self._record("secagg_shares_sent", context, to=sorted(peers.names[h] for h in holders))
            bundles = self._open_shares(context, keys, peers, holders)
        except (VerticalError, SecAggError, CryptoError, grpc.RpcError, ValueError) as exc:
            if isinstance(exc, grpc.RpcError | ValueError) and not self._closed:
                raise  # the aggregator unreachable or this code wrong: the step fails, not the session
            reason = str(exc)
            if self._closed:
                reason = "the node stopped before this session's keys were agreed"
            elif self._wanted not in (None, key):
                reason = f"superseded by round {self._wanted[0]} attempt {self._wanted[1]} before its keys were agreed"
            self._record("secagg_refused", context, step="agreement", reason=reason[:500])
            raise SecAggRefused(reason) from None
        material = RoundMaterial(context, self.policy.threshold, graph, frozenset(bundles), bundles)
        write_secret_file(where / "material.bin", encode_material(material))
        (where / "roster.bin").write_bytes(roster_bytes)  # verified above; public
        self._agreed = (context.round, material, peers)
        self._record("secagg_shares_received", context, senders=sorted(peers.names[s] for s in bundles))
        w = self.params.mask_bits
        threshold = self.policy.threshold
        mask_set = material.mask_set

        def pad_of(length: int) -> np.ndarray:
            return mask_pad(length, w, context, keys, self.me, peers.roster, mask_set, threshold)

        # An update has the same length every round: the pad is expanded here, while the model trains,
        # and the upload only adds it (the first round, or a changed length, expands it at upload time).
        ready = pad_of(self._mask_length) if self._mask_length is not None else None

        def mask(values: np.ndarray) -> np.ndarray:
            self._mask_length = length = int(np.asarray(values).shape[0])
            pad = ready if ready is not None and ready.shape[0] == length else pad_of(length)
            return apply_pad(values, pad, w)

        return mask

    def _verified_roster(self, context: RoundContext, data: bytes, member: bool = True) -> Peers:
        """Each entry: a participant's current silo certificate and advert for this session; ``member``: us too."""
        message = decode_roster(data, len(self.spec.participants))
        anchors = self.credentials.trust
        try:
            aggregator = x509.load_pem_x509_certificate(message.aggregator_pem)
            verify_certificate(aggregator, anchors.ca_cert, roles=("aggregator",), revocation=anchors.revocation)
        except (ValueError, PKIError) as exc:
            raise SecAggError(f"roster's aggregator certificate refused: {exc}") from None
        names: dict[str, str] = {}
        certificates: dict[str, x509.Certificate] = {}
        adverts: list[Advertisement] = []
        for entry in message.entries:
            try:
                cert = x509.load_pem_x509_certificate(entry.cert_pem)
                identity = verify_certificate(cert, anchors.ca_cert, roles=("silo",), revocation=anchors.revocation)
            except (ValueError, PKIError) as exc:
                raise SecAggError(f"roster entry {entry.name!r} refused: {exc}") from None
            if identity.name != entry.name or entry.name not in self.spec.participants:
                raise SecAggError(f"roster entry {entry.name!r} is not a participant's own certificate")
            if identity.fingerprint in names or entry.name in names.values():
                raise SecAggError(f"roster lists {entry.name!r} twice")
            adverts.append(verify_advertisement(Advertisement.from_bytes(entry.advert), context, cert))
            names[identity.fingerprint] = entry.name
            certificates[identity.fingerprint] = cert
        if member and self.me not in names:
            raise SecAggError("the roster leaves this silo out although it advertised keys")
        if len(names) < self.policy.min_participants:
            raise SecAggError(
                f"the roster lists {len(names)} silos; this job needs at least {self.policy.min_participants}"
            )
        self._record("secagg_roster_verified", context, roster=sorted(names.values()))
        return Peers(Roster.build(context, adverts), names, certificates, aggregator)

    def _open_shares(
        self, context: RoundContext, keys: RoundKeys, peers: Peers, holders: frozenset[str]
    ) -> dict[str, ShareBundle]:
        """The shares every graph neighbour sent this silo (a missing one ends the session for it)."""
        bundles: dict[str, ShareBundle] = {}
        for sender in sorted(holders):
            raw = self.relay.receive_blob(peers.names[sender], SecAggKind.SHARES, context.round, MAX_SHARES_BYTES)
            envelope = ShareEnvelope.from_bytes(raw)
            if envelope.sender != sender or envelope.recipient != self.me:
                raise SecAggError(f"shares relayed as from {peers.names[sender]} are addressed otherwise")
            bundles[sender] = open_shares(
                envelope,
                context,
                keys,
                self.me,
                peers.roster.x_of(self.me),
                peers.roster.advert(sender),
                peers.certificates[sender],
            )
        return bundles

    # ------------------------------------------------------------------ 2. unmasking
    def serve(self, round_index: int, attempt: int, wait_ms: int = 1000) -> None:
        """Sign the statement and answer the request of this session if they have arrived (each once)."""
        context = round_context(self.credentials.consortium, self.job_id, round_index, attempt)
        where = self._session_dir(context)
        joined = self._joined(context)
        if joined is None:
            return
        self._agreed = (context.round, *joined)
        material, peers = joined
        names, certificates, aggregator = peers.names, peers.certificates, peers.aggregator
        seq = context.round
        just_signed = False
        if not (where / "signed").exists():
            payloads = self._try_receive(SecAggKind.STATEMENT, seq, wait_ms)
            if payloads is None:
                return
            try:
                statement = ContributorStatement.decode(b"".join(payloads))
                _check_whole_roster(statement, material, names)
                signature = self.responder.sign_statement(statement, material)
            except (SecAggError, CryptoError) as exc:
                self._record("secagg_refused", context, step="statement", reason=str(exc)[:500])
                return
            self._save_responder()
            self.relay.send(AGGREGATOR_RECIPIENT, SecAggKind.CONSISTENCY, seq, [encode_signature(signature)])
            (where / "signed").write_text(statement.digest().hex())
            just_signed = True
            self._record(
                "secagg_statement_signed",
                context,
                contributors=sorted(names.get(fp, fp[:16]) for fp in statement.contributors),
                dropped=sorted(names.get(fp, fp[:16]) for fp in statement.dropped),
            )
        # The request follows the last contributor's signature: wait for it here (long-polls), at most
        # MAX_BLOCKING_WAIT_S after signing: a request held back (a slow signer, or an aggregator that
        # withholds it) must not hold the node's loop; the poll it wakes answers it later.
        # Only right after signing in this call: a silo that answered already (or signed on an earlier
        # poll) looks once without waiting, so that it is back on its poll loop for the next round.
        wait_s = min(self._unmask_timeout_s, MAX_BLOCKING_WAIT_S) if just_signed and wait_ms >= 1000 else 0.0
        deadline = time.monotonic() + wait_s
        first_ms = min(wait_ms, int(MAX_BLOCKING_WAIT_S * 1000)) if just_signed else 0
        payloads = self._try_receive(SecAggKind.REQUEST, seq, first_ms)
        while payloads is None and time.monotonic() < deadline:
            payloads = self._try_receive(SecAggKind.REQUEST, seq, max(1, int((deadline - time.monotonic()) * 1000)))
        if payloads is None:
            return
        try:
            request = decode_request(b"".join(payloads), len(material.graph))
            _check_whole_roster(request.statement, material, names)
            response = self.responder.respond(request, material, certificates, aggregator)
        except UnmaskRefused as exc:
            self._record("secagg_refused", context, step="unmask", refusal=type(exc).__name__, reason=str(exc)[:500])
            return
        except (SecAggError, CryptoError) as exc:
            self._record("secagg_refused", context, step="unmask", refusal="malformed", reason=str(exc)[:500])
            return
        self._save_responder()
        self.relay.send(AGGREGATOR_RECIPIENT, SecAggKind.ANSWER, seq, [encode_response(response)])
        self._record(
            "secagg_answered",
            context,
            self_shares_of=sorted(names.get(s.silo, s.silo[:16]) for s in response.shares if s.kind == "self"),
            mask_shares_of=sorted(names.get(s.silo, s.silo[:16]) for s in response.shares if s.kind == "mask"),
        )

    # ------------------------------------------------------------------ 3. removing the masks
    def correction_for(self, round_index: int, unmasking: bytes, manifest: Manifest) -> np.ndarray:
        """Minus the masks left in a released sum, from the secrets its unmasking revealed (SecAggError if wrong).

        The record must be for the newest session of that round this silo joined, and for the statement
        it signed there: another attempt's genuine secrets would turn this sum into noise. The roster is
        this silo's own if it joined that session, else the record's, verified now as at agreement; every
        secret must match its owner's signed advert.
        """
        if not unmasking:
            raise SecAggError("the aggregate is masked but came without its unmasking record")
        record = decode_unmasking(unmasking, len(self.spec.participants))
        statement = record.secrets.statement
        context = statement.context
        other_job = (context.consortium, context.job) != (self.credentials.consortium, self.job_id)
        if other_job or not 1 <= context.round - round_index * ATTEMPTS_PER_ROUND < ATTEMPTS_PER_ROUND:
            raise SecAggError(f"the unmasking record is for another job or round than round {round_index}")
        sessions = [int(p.name[8:]) for p in self.dir.glob("session-*") if p.name[8:].isdigit()]
        newest = max((n for n in sessions if n // ATTEMPTS_PER_ROUND == round_index), default=0)
        signed = self._session_dir(context) / "signed"
        if newest > context.round or (signed.exists() and signed.read_text() != statement.digest().hex()):
            raise SecAggError(
                f"the unmasking record is for session {context.round}: not the newest of round {round_index} this "
                "silo joined, or not the contributor statement it signed there"
            )
        joined = self._joined(context)
        if joined is not None:  # the graph and roster it agreed on
            graph, peers = joined[0].graph, joined[1]
        else:
            peers = self._verified_roster(context, record.roster, member=False)
            graph = neighbour_graph(list(peers.names), round_graph_seed(context), self.policy.neighbours)
        length = mask_length_for(self.params, manifest)
        return mask_correction(record.secrets, peers.roster, graph, self.params.mask_bits, length)

    def _joined(self, context: RoundContext) -> tuple[RoundMaterial, Peers] | None:
        """The material and verified roster of a session this silo agreed in (kept in memory, else what
        agree() wrote to disk: after a restart, or for an older session); None if it never agreed in it."""
        agreed = self._agreed
        if agreed is not None and agreed[0] == context.round:
            return agreed[1], agreed[2]
        where = self._session_dir(context)
        if not ((where / "material.bin").exists() and (where / "roster.bin").exists()):
            return None
        material = decode_material((where / "material.bin").read_bytes())
        return material, stored_peers(context, (where / "roster.bin").read_bytes())

    def _try_receive(self, kind: SecAggKind, seq: int, wait_ms: int) -> list[bytes] | None:
        """The aggregator's statement or request if it has arrived; an over-long one is refused, audited."""
        try:
            replies = self.relay.receive_now(AGGREGATOR_RECIPIENT, kind, seq, wait_ms, MAX_UNMASK_MESSAGE_BYTES)
        except VerticalError as exc:
            self.events.record(
                "secagg_refused", self.name, job=self.job_id, session=seq, step=str(kind), reason=str(exc)
            )
            return None
        return replies or None


def _check_whole_roster(statement: ContributorStatement, material: RoundMaterial, names: dict[str, str]) -> None:
    """A statement must split this session's whole verified roster into contributors and dropped silos.

    The majority of consistency signatures an answer needs is counted over the statement's roster; in a
    sparse graph a statement over only this silo's neighbourhood would need a majority of that
    neighbourhood, a few colluders, instead of a majority of the session (the split-view defence).
    """
    claimed, verified = set(statement.roster), set(material.graph)
    if claimed != verified:
        extra = sorted(names.get(fp, fp[:16]) for fp in claimed - verified)
        missing = sorted(names.get(fp, fp[:16]) for fp in verified - claimed)
        raise UnmaskRefused(
            f"statement's roster is not this session's whole roster (missing {missing or 'none'}, "
            f"not in it {extra or 'none'}): it would lower the consistency majority; refused"
        )
