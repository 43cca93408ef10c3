"""Secure aggregation at the aggregator: relay the key agreement, then remove the masks under encryption.

One session per attempt of a round of a job with ``secure_aggregation = true``:

1. setup: each silo sends its signed advert (``SecAggKind.ADVERT``); the aggregator checks it against
   the sender's TLS certificate. Once every expected participant advertised, or at the setup
   deadline with at least ``min_participants``, the roster (every advert with its certificate, and
   the aggregator's own certificate) goes to each roster member. Silos then send each other their
   encrypted shares through the relay (``SHARES``): only between roster members, never read here.
2. uploads: only roster members upload (masked, compact); the round core sums them as usual.
3. unmasking, when the round core closes the round: the contributor statement goes to every
   contributor, which signs it (``CONSISTENCY``); with every contributor's signature (or enough at
   the deadline) the aggregator signs a request (``REQUEST``); the answers (``ANSWER``) give one share
   per roster member (self-seed share of a contributor, mask-key share of a dropped silo), from
   which ``crypto.secagg.unmask`` computes the correction: minus the total mask. It is added as a
   plaintext to the encrypted sum, which is released like any other. The aggregator learns the
   total mask (a function of the masks only) and never an update or the sum.

Every step is audited. A session lives in memory: after an aggregator restart the round core
reopens the round with a new attempt, hence fresh keys (``RoundCore.recover``).
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aggregator.core.clock import Clock
from aggregator.core.errors import Forbidden, InvalidArgument, PreconditionFailed
from aggregator.core.secagg_session import (
    MAX_ANSWER_BYTES,
    MAX_CONSISTENCY_BYTES,
    MAX_SHARE_ENVELOPE_BYTES,
    AggregatorCredentials,
    Fail,
    Release,
    Session,
)
from aggregator.core.shared import ChangeFeed
from aggregator.core.store_contract import JobStore
from aggregator.core.uploads import OpenRound
from aggregator.core.views import RelayOffer
from audit.events import EventSink
from crypto.errors import CryptoError
from crypto.packing import Manifest
from crypto.pki import Identity
from crypto.secagg.errors import NotEnoughSurvivors, SecAggError
from crypto.secagg.graph import neighbour_graph, round_graph_seed
from crypto.secagg.keys import Advertisement, Roster, verify_advertisement
from crypto.secagg.unmask import ContributorStatement, consistency_needed, make_request, reveal
from crypto.secagg.wire import check_response, check_signature, decode_response, decode_signature, encode_request
from protocol.jobspec import JobSpec, compact_params, secagg_policy, secagg_table
from protocol.secagg import (
    MAX_ADVERT_BYTES,
    RosterEntry,
    RosterMessage,
    UnmaskingRecord,
    encode_roster,
    encode_unmasking,
    round_context,
)
from protocol.vocabulary import AGGREGATOR_RECIPIENT, SecAggKind


class SecureAggregation:
    """The aggregator's side of every secure-aggregation session (the round core calls in at open and close)."""

    def __init__(
        self,
        store: JobStore,
        events: EventSink,
        clock: Clock,
        consortium: str,
        credentials: AggregatorCredentials | None,
        release: Release,
        fail: Fail,
    ) -> None:
        self.store, self.events, self.clock = store, events, clock
        self.consortium, self.credentials = consortium, credentials
        self._release, self._fail = release, fail
        self.sessions: dict[str, Session] = {}
        # Wakes receivers of session mail without waking every silo's Poll: relay traffic changes no task.
        self.mail = ChangeFeed()

    # ------------------------------------------------------------------ round core hooks
    def opened(self, open_round: OpenRound) -> None:
        """A round attempt of a secure-aggregation job opened: start its key-agreement session."""
        spec = open_round.spec
        if not spec.secure_aggregation:
            return
        setup = secagg_table(spec).setup_timeout_s
        context = round_context(self.consortium, open_round.job_id, open_round.round, open_round.attempt)
        self.sessions[open_round.job_id] = Session(
            open_round, context, secagg_policy(spec), compact_params(spec), open_round.opened_at + setup
        )
        self.events.record(
            "secagg_session_opened",
            "aggregator",
            job=open_round.job_id,
            round=open_round.round,
            attempt=open_round.attempt,
            session=context.round,
            threshold=self.sessions[open_round.job_id].policy.threshold,
        )

    def ended(self, job_id: str) -> None:
        self._end(job_id)

    def _end(self, job_id: str) -> None:
        """Forget a session (its undelivered mail with it) and count what it relayed, in one store write."""
        session = self.sessions.pop(job_id, None)
        if session is not None and session.relay_bytes:
            self.store.add_relay_bytes(job_id, session.relay_bytes)

    def take(self, job_id: str, recipient: str, kind: str, seq: int, sender: str) -> bytes | None:
        """The message for ``recipient`` of the session in progress, once; None if there is none (yet)."""
        session = self.sessions.get(job_id)
        return session.take(recipient, kind, sender) if session is not None and session.seq == seq else None

    def check_upload(self, job_id: str, silo: Identity, manifest: Manifest) -> None:
        """Only a roster member may upload, and only a masked upload of the job's quantization."""
        session = self.sessions.get(job_id)
        if session is None:
            return
        if session.roster is None:
            raise PreconditionFailed(
                f"job {job_id}: secure aggregation has not fixed this round's roster yet; advertise keys, then upload"
            )
        if session.roster.get(silo.fingerprint) != silo.name:
            raise Forbidden(
                f"{silo.name} is not in this round's secure-aggregation roster (it did not advertise keys in time); "
                "its upload could not be unmasked"
            )
        if manifest.quantization != session.params.describe():
            raise PreconditionFailed(
                f"upload is quantized as {manifest.quantization or 'nothing'}; this job masks "
                f"{session.params.describe()}"
            )

    def closing(self, open_round: OpenRound, layout: Any, contributors: list[str], why: str, now: float) -> bool:
        """The round core would release: start unmasking instead (True), or fail at once (False, done here)."""
        session = self.sessions.get(open_round.job_id)
        if session is None or session.roster is None:
            return False
        threshold = session.policy.threshold
        if len(contributors) < threshold + 1:
            self._fail_round(
                session,
                f"secure aggregation: only {len(contributors)} silos uploaded; removing the masks needs at least "
                f"threshold + 1 = {threshold + 1} survivors; nothing released",
                now,
            )
            return True
        fingerprints = [fp for fp, name in session.roster.items() if name in set(contributors)]
        session.layout, session.contributors, session.why = layout, contributors, why
        session.statement = ContributorStatement.make(session.context, session.roster, fingerprints)
        session.unmask_deadline = now + secagg_table(open_round.spec).unmask_timeout_s
        open_round.closing = True
        encoded = session.statement.encode()
        for name in contributors:
            session.post(AGGREGATOR_RECIPIENT, name, SecAggKind.STATEMENT, encoded)
        self.mail.bump()
        self.events.record(
            "secagg_statement_sent",
            "aggregator",
            job=open_round.job_id,
            round=open_round.round,
            session=session.seq,
            contributors=sorted(contributors),
            dropped=sorted(session.name_of(fp) for fp in session.statement.dropped),
        )
        return True

    def tick(self, now: float) -> bool:
        """Deadlines: publish the roster at the setup deadline; unmask with what arrived at the unmask
        deadline. True if anything changed (the caller wakes the pollers)."""
        changed = False
        for session in list(self.sessions.values()):
            if session.roster is None and now >= session.setup_deadline:
                self._publish_roster(session, "setup deadline reached", now)
                changed = True
            elif session.statement is not None and now >= session.unmask_deadline:
                if not session.request_sent:
                    self._send_request(session, now, at_deadline=True)
                else:
                    self._finish(session, now, at_deadline=True)
                changed = True
        return changed

    # ------------------------------------------------------------------ relayed messages
    def accept(self, sender: Identity, cert: x509.Certificate, m: RelayOffer, spec: JobSpec) -> bool:
        """Check one message of a secure-aggregation job; True if it is for the aggregator (handled here),
        False if it is a share envelope to relay to ``m.to``. Refusals raise domain errors."""
        session = self.sessions.get(m.job_id)
        if session is None or sender.name not in spec.participants:
            raise Forbidden("secure-aggregation messages are for the participants of a round in progress")
        if m.seq != session.seq:
            raise PreconditionFailed(
                f"message is for session {m.seq}; the session in progress is {session.seq} "
                f"(round {session.open_round.round}, attempt {session.open_round.attempt})"
            )
        kind = m.kind
        if kind == SecAggKind.SHARES:
            self._check_share(session, sender, m)
            return False
        if m.to != AGGREGATOR_RECIPIENT:
            raise Forbidden(f"{kind!r} messages go to the aggregator")
        if kind == SecAggKind.ADVERT:
            self._advert(session, sender, cert, m.payload)
        elif kind == SecAggKind.CONSISTENCY:
            self._consistency(session, sender, m.payload)
        elif kind == SecAggKind.ANSWER:
            self._answer(session, sender, m.payload)
        else:
            raise InvalidArgument(f"kind: {kind!r} is not a message a silo sends in secure aggregation")
        if self.sessions.get(m.job_id) is session:
            session.relay_bytes += len(m.payload)
        else:  # this message ended the session (the last answer): its count was already written
            self.store.add_relay_bytes(m.job_id, len(m.payload))
        return True

    def _advert(self, session: Session, sender: Identity, cert: x509.Certificate, payload: bytes) -> None:
        if session.roster is not None:
            raise PreconditionFailed("this round's roster is already fixed; wait for the next round")
        if len(payload) > MAX_ADVERT_BYTES:
            raise InvalidArgument(f"payload: an advert of {len(payload)} bytes; at most {MAX_ADVERT_BYTES}")
        if sender.name in session.adverts:
            raise PreconditionFailed(f"{sender.name} already advertised keys for this session")
        try:
            advert = verify_advertisement(Advertisement.from_bytes(payload), session.context, cert)
        except SecAggError as exc:
            raise InvalidArgument(f"payload: advert refused: {exc}") from None
        session.adverts[sender.name] = (sender, cert, advert, payload)
        self.events.record(
            "secagg_advert_received",
            sender.name,
            job=session.open_round.job_id,
            round=session.open_round.round,
            session=session.seq,
            actor_fingerprint=sender.fingerprint,
        )
        expected = set(session.open_round.spec.participants) - set(self.store.declines(session.open_round.job_id))
        if expected <= set(session.adverts):
            self._publish_roster(session, "every participant advertised", self.clock.now())

    def _publish_roster(self, session: Session, why: str, now: float) -> None:
        job_id = session.open_round.job_id
        if len(session.adverts) < session.policy.min_participants:
            self._fail_round(
                session,
                f"secure aggregation: {len(session.adverts)} silos advertised keys by the setup deadline; "
                f"min_participants is {session.policy.min_participants}; nothing released",
                now,
            )
            return
        if self.credentials is None:
            self._fail_round(session, "secure aggregation: the aggregator has no signing credentials", now)
            return
        session.roster = {ident.fingerprint: name for name, (ident, _, _, _) in session.adverts.items()}
        session.graph = neighbour_graph(
            list(session.roster), round_graph_seed(session.context), session.policy.neighbours
        )
        pem = self.credentials.certificate.public_bytes(serialization.Encoding.PEM)
        entries = [
            RosterEntry(name, c.public_bytes(serialization.Encoding.PEM), raw)
            for name, (_, c, _, raw) in sorted(session.adverts.items())
        ]
        encoded = session.roster_bytes = encode_roster(RosterMessage(pem, entries))
        for name in session.adverts:
            session.post(AGGREGATOR_RECIPIENT, name, SecAggKind.ROSTER, encoded)
        self.mail.bump()
        self.events.record(
            "secagg_roster_sent",
            "aggregator",
            job=job_id,
            round=session.open_round.round,
            session=session.seq,
            roster=sorted(session.adverts),
            why=why,
        )

    def _check_share(self, session: Session, sender: Identity, m: RelayOffer) -> None:
        if session.roster is None or session.graph is None:
            raise PreconditionFailed("shares go out after the roster is fixed")
        if session.roster.get(sender.fingerprint) != sender.name:
            raise Forbidden(f"{sender.name} is not in this round's roster")
        to = session.fingerprint_of(m.to)
        if to is None or to not in session.graph[sender.fingerprint]:
            raise Forbidden(f"{m.to!r} is not one of {sender.name}'s share holders this round")
        if len(m.payload) > MAX_SHARE_ENVELOPE_BYTES:
            raise InvalidArgument(
                f"payload: a share envelope of {len(m.payload)} bytes; at most {MAX_SHARE_ENVELOPE_BYTES}"
            )
        pair = (sender.fingerprint, to)
        if pair in session.shares_sent:
            raise PreconditionFailed(f"{sender.name} already sent its shares to {m.to} this session")
        session.shares_sent.add(pair)  # once per pair, also after delivery: no re-send floods the relay store

    def shares_relayed(self, sender: str, job_id: str, recipients: list[str], seq: int) -> None:
        self.events.record("secagg_shares_relayed", sender, job=job_id, session=seq, recipients=sorted(recipients))

    def _contributor(self, session: Session, sender: Identity, what: str) -> str:
        if session.statement is None:
            raise PreconditionFailed(f"no unmasking in progress: {what} is not expected now")
        if (
            sender.fingerprint not in session.statement.contributors
            or session.name_of(sender.fingerprint) != sender.name
        ):
            raise Forbidden(f"{sender.name} is not a contributor of this round: no {what} from it")
        return sender.fingerprint

    @staticmethod
    def _certificate(session: Session, fingerprint: str) -> x509.Certificate:
        """The certificate a roster member advertised with (its TLS certificate when it did)."""
        return next(c for ident, c, _, _ in session.adverts.values() if ident.fingerprint == fingerprint)

    def _consistency(self, session: Session, sender: Identity, payload: bytes) -> None:
        fp = self._contributor(session, sender, "consistency signature")
        if len(payload) > MAX_CONSISTENCY_BYTES or session.request_sent or fp in session.signatures:
            raise PreconditionFailed("consistency signature refused: too long, too late or repeated")
        try:
            signature = decode_signature(payload)
        except SecAggError as exc:
            raise InvalidArgument(f"payload: {exc}") from None
        if signature.signer != fp:
            raise Forbidden("a consistency signature names another signer than its sender's certificate")
        assert session.statement is not None
        try:
            check_signature(session.statement, signature, self._certificate(session, fp))
        except SecAggError as exc:
            raise InvalidArgument(f"payload: {exc}; sign the contributor statement of this session") from None
        session.signatures[fp] = signature  # checked again by every answering silo
        self.events.record(
            "secagg_consistency_received", sender.name, job=session.open_round.job_id, session=session.seq
        )
        if len(session.signatures) == len(session.statement.contributors):
            self._send_request(session, self.clock.now(), at_deadline=False)

    def _send_request(self, session: Session, now: float, at_deadline: bool) -> None:
        assert session.statement is not None and self.credentials is not None
        needed = consistency_needed(session.statement, session.policy.threshold)
        if len(session.signatures) < needed:
            self._fail_round(
                session,
                f"secure aggregation: {len(session.signatures)} contributors confirmed the contributor set by the "
                f"unmasking deadline, {needed} needed; nothing released",
                now,
            )
            return
        request = make_request(
            session.statement,
            self.credentials.certificate,
            self.credentials.private_key,
            [session.signatures[fp] for fp in sorted(session.signatures)],
        )
        encoded = encode_request(request)
        for fp in session.statement.contributors:
            session.post(AGGREGATOR_RECIPIENT, session.name_of(fp), SecAggKind.REQUEST, encoded)
        self.mail.bump()
        session.request_sent = True
        session.unmask_deadline = now + secagg_table(session.open_round.spec).unmask_timeout_s
        self.events.record(
            "secagg_unmask_requested",
            "aggregator",
            job=session.open_round.job_id,
            round=session.open_round.round,
            session=session.seq,
            signatures=len(session.signatures),
            at_deadline=at_deadline,
        )

    def _answer(self, session: Session, sender: Identity, payload: bytes) -> None:
        fp = self._contributor(session, sender, "unmasking answer")
        if not session.request_sent or fp in session.answers or len(payload) > MAX_ANSWER_BYTES:
            raise PreconditionFailed("unmasking answer refused: not requested, repeated or too long")
        try:
            response = decode_response(payload)
        except SecAggError as exc:
            raise InvalidArgument(f"payload: {exc}") from None
        if response.responder != fp:
            raise Forbidden("an unmasking answer names another responder than its sender's certificate")
        assert session.statement is not None
        try:
            check_response(session.statement, response, self._certificate(session, fp))
        except SecAggError as exc:
            raise InvalidArgument(f"payload: {exc}; answer the unmasking request of this session") from None
        session.answers[fp] = response
        kinds = {"self": 0, "mask": 0}
        for share in response.shares:
            kinds[share.kind] += 1
        self.events.record(
            "secagg_answer_received",
            sender.name,
            job=session.open_round.job_id,
            session=session.seq,
            self_shares=kinds["self"],
            mask_shares=kinds["mask"],
        )
        if len(session.answers) == len(session.statement.contributors):
            self._finish(session, self.clock.now(), at_deadline=False)

    # ------------------------------------------------------------------ the end of a session
    def _finish(self, session: Session, now: float, at_deadline: bool) -> None:
        """Reconstruct the revealed secrets and release the masked sum with them; or fail with the reason.

        The aggregator does not remove the masks: every silo checks the secrets against the roster it
        verified and removes them after decryption (``crypto.secagg.unmask.mask_correction``), so a wrong
        secret is refused by every silo instead of becoming a wrong sum, and the round's tail encodes nothing.
        """
        open_round = session.open_round
        assert session.statement is not None
        certificates = {ident.fingerprint: c for ident, c, _, _ in session.adverts.values()}
        roster = Roster.build(session.context, [a for _, _, a, _ in session.adverts.values()])
        try:
            result = reveal(
                session.statement, list(session.answers.values()), roster, session.policy.threshold, certificates
            )
            unmasking = encode_unmasking(UnmaskingRecord(session.roster_bytes, result.secrets))
        except (NotEnoughSurvivors, SecAggError, CryptoError) as exc:
            self._fail_round(session, f"secure aggregation: the masks cannot be removed: {exc}; nothing released", now)
            return
        self.events.record(
            "secagg_unmasked",
            "aggregator",
            job=open_round.job_id,
            round=open_round.round,
            session=session.seq,
            answers=len(session.answers),
            dropped=sorted(session.name_of(fp) for fp in session.statement.dropped),
            rejected_answers={session.name_of(fp): why for fp, why in result.rejected_responses.items()},
            wrong_shares={
                session.name_of(fp): [session.name_of(x) for x in by] for fp, by in result.wrong_shares.items()
            },
            at_deadline=at_deadline,
        )
        self._end(open_round.job_id)
        self._release(open_round, session.layout, session.contributors, session.why, now, unmasking)

    def _fail_round(self, session: Session, reason: str, now: float) -> None:
        self._end(session.open_round.job_id)
        self.events.record(
            "secagg_failed", "aggregator", job=session.open_round.job_id, session=session.seq, reason=reason
        )
        self._fail(session.open_round, sorted(session.contributors), "secure aggregation", reason, now)
