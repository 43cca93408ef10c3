"""Vertical jobs at the aggregator: relay opaque messages, sum the passive parties' partial scores,
and record the active party's epochs and its finish. Vertical jobs have no aggregation rounds.

Partial scores are addressed to the aggregator (``AGGREGATOR_RECIPIENT``). When every passive party
has sent its part for a step, the parts are added (as CKKS ciphertexts under the active party's
public key, which the aggregator cannot decrypt, or as plain vectors in a plaintext comparison run)
and the sum is delivered to the active party. Individual parts are deleted once summed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from aggregator.core.clock import Clock
from aggregator.core.errors import Forbidden, InvalidArgument, PreconditionFailed
from aggregator.core.shared import ChangeFeed, Specs, bounded_send, wait_for_mail
from aggregator.core.store_contract import JobStore
from aggregator.core.views import RelayDelivery, RelayOffer, RoundView
from aggregator.limits import check_job_id, check_name
from audit.events import EventSink
from crypto.errors import CryptoError
from crypto.keys import load_public_context
from crypto.vertical_codec import VectorCodec
from protocol.jobspec import JobSpec
from protocol.vocabulary import AGGREGATOR_RECIPIENT, SUMMED_KIND, JobStatus, RelayKind, RoundStatus


class VerticalJobs:
    def __init__(self, store: JobStore, specs: Specs, events: EventSink, clock: Clock, feed: ChangeFeed) -> None:
        self.store, self.specs, self.events, self.clock, self.feed = store, specs, events, clock, feed
        self._codecs: dict[str, VectorCodec] = {}
        self._codec_lock = threading.Lock()

    # ------------------------------------------------------------------ relay
    def send(
        self, sender: str, offers: Iterable[RelayOffer], max_messages: int, max_bytes: int, max_payload: int
    ) -> int:
        """Store a Send's messages together (a receiver never sees half a payload); returns how many.

        Each message is authorized as it arrives, before the next one is read, and the whole Send is
        bounded; partial scores complete a step are summed and forwarded to the active party.
        """
        messages: list[RelayOffer] = []
        summed: set[tuple[str, str, int]] = set()
        for m in bounded_send(offers, max_messages, max_bytes):
            if self._authorize(sender, m, max_payload):
                summed.add((m.job_id, m.kind, m.seq))
            messages.append(m)
        with self.store.transaction():
            for m in messages:
                self.store.relay_put(m.job_id, sender, m.to, m.kind, m.seq, m.payload)
                self.store.add_relay_bytes(m.job_id, len(m.payload))
        for job_id, kind, seq in summed:
            self._maybe_sum(job_id, self.specs.get(job_id), RelayKind(kind), seq)
        self.feed.bump()
        return len(messages)

    def _authorize(self, sender: str, m: RelayOffer, max_payload: int) -> bool:
        """Refuse a message its sender may not send; True if it goes to the aggregator to be summed."""
        check_job_id(m.job_id)
        check_name(m.to, "to")
        check_name(m.kind, "kind")
        if len(m.payload) > max_payload:
            raise InvalidArgument(f"payload: {len(m.payload)} bytes in one relay message; at most {max_payload}")
        spec = self.specs.get(m.job_id)
        if spec.partition != "vertical" or sender not in spec.participants:
            raise Forbidden("relay is for the participants of a vertical job")
        if m.to == AGGREGATOR_RECIPIENT:
            if m.kind not in SUMMED_KIND or spec.vertical is None or sender not in spec.vertical.passive:
                raise Forbidden("only passive parties send partial scores to the aggregator")
            try:
                self._codec(m.job_id, spec).check_part(m.payload)
            except CryptoError as exc:
                raise InvalidArgument(f"payload: a {m.kind!r} part of step {m.seq} is malformed: {exc}") from None
            return True
        if m.to not in spec.participants:
            raise Forbidden(f"{m.to!r} is not a party of this job")
        return False

    def receive(
        self,
        recipient: str,
        job_id: str,
        kind: str,
        seq: int,
        sender: str,
        wait_s: float,
        connected: Callable[[], bool],
    ) -> RelayDelivery:
        """Take the messages of one (kind, seq, sender) for ``recipient``, waiting up to ``wait_s`` for them."""
        if recipient not in self.specs.get(job_id).participants:
            raise Forbidden("not a party of this job")
        taken = seq

        def take() -> list[bytes]:
            nonlocal taken
            taken, payloads = self.store.relay_take(job_id, recipient, kind, seq, sender)
            return payloads

        payloads = wait_for_mail(take, self.feed, self.clock, wait_s, connected)
        return RelayDelivery(taken, payloads)

    def _codec(self, job_id: str, spec: JobSpec) -> VectorCodec:
        with self._codec_lock:
            codec = self._codecs.get(job_id)
            if codec is None:
                if spec.he_profile == "none":
                    codec = VectorCodec(None)
                else:
                    found = self.store.key_material(job_id)
                    if found is None:
                        raise PreconditionFailed(
                            f"job {job_id}: the active party has not published its key yet; send again later"
                        )
                    try:
                        public = load_public_context(found[1])  # refuses anything holding a secret key
                    except CryptoError as exc:
                        raise PreconditionFailed(f"job {job_id}: the published key is unusable: {exc}") from None
                    codec = VectorCodec(public.tenseal_context)
                self._codecs[job_id] = codec
            return codec

    def _maybe_sum(self, job_id: str, spec: JobSpec, kind: RelayKind, seq: int) -> bool:
        """Sum and forward once every passive party's part for (kind, seq) is in. True if forwarded."""
        assert spec.vertical is not None
        passives = spec.vertical.passive
        parts = [self.store.relay_peek(job_id, AGGREGATOR_RECIPIENT, kind, seq, p) for p in passives]
        if any(not part for part in parts):
            return False
        try:  # each part loaded when it arrived; only parts that disagree with each other fail here
            total = self._codec(job_id, spec).add(parts)
        except CryptoError as exc:
            raise InvalidArgument(f"the passive parties' {kind!r} parts of step {seq} do not add up: {exc}") from None
        with self.store.transaction():
            for p in passives:
                self.store.relay_take(job_id, AGGREGATOR_RECIPIENT, kind, seq, p)
            for chunk in total:
                self.store.relay_put(job_id, AGGREGATOR_RECIPIENT, spec.vertical.active, SUMMED_KIND[kind], seq, chunk)
        return True

    # ------------------------------------------------------------------ the job's life
    def _check_running_active(self, job_id: str, spec: JobSpec, party: str, refusal: str) -> None:
        if spec.vertical is None or party != spec.vertical.active:
            raise Forbidden(refusal)
        row = self.store.job(job_id)
        if row is None or row.status != JobStatus.RUNNING:
            raise PreconditionFailed(f"job {job_id} is not running")

    def check_metrics(self, job_id: str, spec: JobSpec, silo: str) -> None:
        """Metrics of a vertical job describe an epoch the active party trained: only it reports them."""
        self._check_running_active(job_id, spec, silo, "only the active party reports the epochs of a vertical job")

    def finish(self, job_id: str, party: str, ok: bool, reason: str, metrics: dict[str, float]) -> None:
        spec = self.specs.get(job_id)
        self._check_running_active(job_id, spec, party, "only the active party of a vertical job can finish it")
        if metrics:
            self.store.put_metrics(job_id, spec.rounds, party, metrics)
        status = JobStatus.COMPLETED if ok else JobStatus.FAILED
        with self.feed.lock:
            self.store.update_job(job_id, status=status, reason=reason, current_round=spec.rounds)
            self.feed.bump()
        self.events.record("job_completed" if ok else "job_failed", party, job=job_id, reason=reason, metrics=metrics)

    def declined(self, job_id: str, silo: str, reasons: list[str]) -> None:
        """Every party holds columns the model needs: one refusal ends the job."""
        row = self.store.job(job_id)
        if row is not None and row.status == JobStatus.RUNNING:
            with self.feed.lock:
                self.store.update_job(job_id, status=JobStatus.FAILED, reason=f"{silo} declined: {'; '.join(reasons)}")
                self.feed.bump()

    def epochs(self, spec: JobSpec, metrics: dict[int, dict[str, dict[str, float]]]) -> list[RoundView]:
        """No aggregation rounds: the status shows the active party's epochs."""
        return [
            RoundView(epoch, RoundStatus.TRAINED, sorted(spec.participants), list(by_silo.items()))
            for epoch, by_silo in sorted(metrics.items())
            if epoch < spec.rounds
        ]
