"""The round state machine of horizontal jobs: when an aggregate may be released.

A round is open until every (non-declining) participant has uploaded, or until its deadline. At the
deadline it closes with the contributors it has if they reach the quorum, and otherwise fails and is
reopened (up to the job's retry limit) or fails the job with the reason. Uploads (``core.uploads``)
are added in place into the round's sum as their chunks arrive; one that breaks off or turns out bad
halfway is subtracted again, so a round never contains part of an upload. Every declared layout
(tensors, sizes, scale) sums apart for the whole round: no single contributor, say the fastest, fixes
the layout for the others. At close the layout most contributors committed to is released if it alone
leads and reaches the quorum; contributors of other layouts are left out and audited
(``layout_outvoted``); a tie fails the round, naming the competing layouts (``core.layouts``). A
secure-aggregation round (``core.secagg``) takes uploads only from the silos that agreed on masks, and
at close is unmasked before its release. Vertical jobs never open a round here (``core.vertical``
runs them), so an upload to one finds no open round and is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography import x509

from aggregator.core.clock import Clock
from aggregator.core.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    Forbidden,
    InvalidArgument,
    PreconditionFailed,
)
from aggregator.core.layouts import LayoutVote
from aggregator.core.secagg import SecureAggregation
from aggregator.core.secagg_session import AggregatorCredentials
from aggregator.core.shared import ChangeFeed, PolicyInForce
from aggregator.core.store_contract import AggregateArchive, JobStore
from aggregator.core.uploads import OpenRound, Upload
from aggregator.core.views import UploadOffer, UploadReceipt
from aggregator.keyring import PublicKeyring
from audit.events import EventSink
from crypto.engine import PLAIN_FINGERPRINT, Accumulator
from crypto.errors import CryptoError, SignatureError
from crypto.packing import Manifest, chunk_digest
from crypto.pki import Identity
from policies.evaluate import evaluate_member, evaluate_release
from protocol.jobspec import KEYED_PROFILES, JobSpec
from protocol.vocabulary import JobStatus, RoundStatus


class RoundCore:
    def __init__(
        self,
        store: JobStore,
        archive: AggregateArchive,
        keyring: PublicKeyring,
        events: EventSink,
        clock: Clock,
        feed: ChangeFeed,
        spool_dir: Path,
        policies: PolicyInForce,
        max_update_values: int,
        consortium: str = "",
        credentials: AggregatorCredentials | None = None,
    ) -> None:
        self.store, self.archive, self.keyring, self.events = store, archive, keyring, events
        self.clock, self.feed, self.lock = clock, feed, feed.lock
        self.spool_dir = spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.policies = policies
        self.max_update_values = max_update_values
        self._open: dict[str, OpenRound] = {}
        self.secagg = SecureAggregation(store, events, clock, consortium, credentials, self._release, self._fail)

    # ------------------------------------------------------------------ lifecycle
    def start(self, job_id: str, spec: JobSpec) -> None:
        """Open round 0 of a newly submitted job."""
        self._open_round(job_id, spec, 0, 1, self.clock.now())

    def recover(self, job_id: str, spec: JobSpec, current_round: int) -> None:
        """Reopen a running job's current round after a restart: its in-memory sum was lost.

        A secure-aggregation round reopens as its next attempt: the silos' keys, shares and unmasking
        commitments are bound to the attempt, and reusing them with a new roster could reveal masks.
        """
        self.store.clear_contributions(job_id, current_round)
        row = self.store.round(job_id, current_round)
        attempt = (row.attempt if row else 1) + (1 if spec.secure_aggregation and row else 0)
        self._open_round(job_id, spec, current_round, attempt, self.clock.now())
        self.events.record(
            "round_reopened",
            "aggregator",
            job=job_id,
            round=current_round,
            reason="aggregator restarted; contributors must re-upload",
        )

    def open_round(self, job_id: str) -> OpenRound | None:
        return self._open.get(job_id)

    def open_job_ids(self) -> set[str]:
        return set(self._open)

    def end_job(self, job_id: str, status: JobStatus, reason: str) -> None:
        """End a job (aborted, failed): cancel uploads in flight and close its open round with it."""
        with self.lock:
            open_round = self._open.pop(job_id, None)
            self.secagg.ended(job_id)
            if open_round is not None:
                for upload in list(open_round.uploads):
                    upload.cancel(f"job {job_id} is {status}")
                self.store.update_round(
                    job_id, open_round.round, status=status, reason=reason, closed_at=self.clock.now()
                )
            self.store.update_job(job_id, status=status, reason=reason)
            self.feed.bump()

    def _open_round(self, job_id: str, spec: JobSpec, round_index: int, attempt: int, now: float) -> None:
        public = self.keyring.get(spec.key_fingerprint or "") if spec.he_profile in KEYED_PROFILES else None
        deadline = now + spec.round_timeout_s
        self._open[job_id] = OpenRound(job_id, round_index, attempt, now, deadline, spec, public)
        self.store.upsert_round(job_id, round_index, RoundStatus.OPEN, attempt, now, deadline)
        self.store.update_job(job_id, current_round=round_index)
        self.events.record(
            "round_opened",
            "aggregator",
            job=job_id,
            round=round_index,
            attempt=attempt,
            deadline_s=spec.round_timeout_s,
        )
        self.secagg.opened(self._open[job_id])

    def required(self, spec: JobSpec) -> int:
        return max(spec.min_silos, self.policies.min_per_aggregate())

    def expected_contributors(self, job_id: str, spec: JobSpec) -> set[str]:
        """Participants still expected this round: not those that declined the job or this round."""
        open_round = self._open.get(job_id)
        declined = set(self.store.declines(job_id))
        if open_round is not None:
            declined |= set(self.store.declines(job_id, open_round.round))
        return set(spec.participants) - declined

    # ------------------------------------------------------------------ uploads
    def receive(
        self,
        silo: Identity,
        cert: x509.Certificate,
        offer: UploadOffer,
        chunks: Iterable[bytes],
        connected: Callable[[], bool],
        spec: JobSpec,
    ) -> UploadReceipt:
        """One upload, start to end: committed whole, or rolled back here (and only here)."""
        opened = self._open_upload(silo, cert, offer, spec)
        if isinstance(opened, UploadReceipt):
            return opened
        upload = opened
        try:
            for data in chunks:
                upload.feed(data)
            if not connected():
                raise Cancelled("the silo went away before finishing its upload")
            upload.check_complete()
            return self._commit(upload)
        finally:
            if not upload.done:
                upload.rollback()
                self.events.record(
                    "upload_rolled_back",
                    silo.name,
                    job=upload.round.job_id,
                    round=upload.round.round,
                    chunks_added=upload.added,
                )

    def _open_upload(
        self, silo: Identity, cert: x509.Certificate, offer: UploadOffer, spec: JobSpec
    ) -> Upload | UploadReceipt:
        job_id, round_index = offer.job_id, offer.round
        self._check_may_upload(silo, job_id, round_index, spec)
        if offer.declared_values > self.max_update_values:  # refused before anything is allocated for it
            raise InvalidArgument(
                f"manifest.value_count: {offer.declared_values} values declared; this aggregator accepts at most "
                f"{self.max_update_values} per upload (config max_update_values)",
            )
        try:
            signed = offer.open_header()
        except CryptoError as exc:
            raise InvalidArgument(f"manifest rejected: {exc}") from None
        try:
            signed.verify(cert)
        except SignatureError as exc:
            raise Forbidden(f"upload signature rejected: {exc}") from None
        manifest = signed.manifest
        expected_fp = spec.key_fingerprint if spec.he_profile in KEYED_PROFILES else PLAIN_FINGERPRINT
        if manifest.fingerprint != expected_fp or manifest.profile != spec.he_profile:
            raise PreconditionFailed(
                f"upload is under key {manifest.fingerprint} ({manifest.profile}); job {job_id} uses "
                f"{expected_fp} ({spec.he_profile})",
            )
        with self.lock:
            open_round = self._open.get(job_id)
            if open_round is None or open_round.round != round_index:
                raise PreconditionFailed(f"round {round_index} of job {job_id} closed meanwhile")
            previous = open_round.contributors.get(silo.name)
            if previous is not None:  # a re-send of the same upload is acknowledged, anything else refused
                if previous[0] == manifest.digest().hex():
                    return UploadReceipt(
                        job_id, round_index, manifest.chunk_count, previous[1], previous[0], already_received=True
                    )
                raise AlreadyExists(
                    f"duplicate upload: {silo.name} already contributed to round {round_index} of {job_id}"
                )
            if open_round.closing:
                raise PreconditionFailed(f"round {round_index} of job {job_id} is closing (unmasking); too late")
            self.secagg.check_upload(job_id, silo, manifest)
            if any(u.silo == silo.name for u in open_round.uploads):
                raise AlreadyExists(f"{silo.name} already has an upload in progress for this round")
            upload = Upload(
                open_round,
                silo.name,
                manifest,
                signed.audit_head,
                self._accumulator_for(open_round, manifest),
                self.lock,
                self.spool_dir,
            )
            open_round.uploads.add(upload)
            return upload

    def _check_may_upload(self, silo: Identity, job_id: str, round_index: int, spec: JobSpec) -> None:
        """Participant, allowed by policy, job running and this round open (in that order)."""
        with self.lock:
            row = self.store.job(job_id)
            assert row is not None  # the caller read the spec of this job
            if silo.name not in spec.participants:
                raise Forbidden(f"{silo.name} is not a participant of job {job_id}")
            policy = self.policies.current()
            if policy is not None:
                decision = evaluate_member(policy, silo.name, silo.fingerprint, f"upload round {round_index}")
                self.events.record("policy_decision", silo.name, job=job_id, round=round_index, **decision.as_details())
                if not decision.allowed:
                    raise Forbidden("; ".join(decision.reasons))
            if row.status != JobStatus.RUNNING:
                raise PreconditionFailed(f"job {job_id} is {row.status}; it takes no uploads")
            open_round = self._open.get(job_id)
            if open_round is None:
                raise PreconditionFailed(f"job {job_id} has no open round")
            if round_index < open_round.round:
                raise PreconditionFailed(
                    f"round {round_index} of job {job_id} is closed (replay?); the open round is {open_round.round}"
                )
            if round_index > open_round.round:
                raise PreconditionFailed(
                    f"round {round_index} of job {job_id} is not open; the open round is {open_round.round}"
                )

    def _accumulator_for(self, open_round: OpenRound, manifest: Manifest) -> Accumulator:
        """The sum of this upload's layout. Each layout sums apart for the whole round, so the first
        committed upload decides nothing; memory stays bounded because each participant holds at most
        one upload in flight or committed, each of at most ``max_update_values`` values."""
        key = manifest.layout_key()
        if key not in open_round.staging:
            open_round.staging[key] = Accumulator(open_round.public, manifest.chunk_count)
        return open_round.staging[key]

    def _commit(self, upload: Upload) -> UploadReceipt:
        with self.lock:
            if upload.cancelled:
                raise Aborted(upload.cancelled)
            open_round = upload.round
            key = upload.manifest.layout_key()
            open_round.committed.setdefault(key, upload.manifest)  # before end(): its layout's sum stays
            open_round.layout_of[upload.silo] = key
            self.store.add_contribution(
                open_round.job_id, open_round.round, upload.silo, upload.digest, upload.nbytes, upload.audit_head
            )
            open_round.contributors[upload.silo] = (upload.digest, upload.nbytes, upload.audit_head)
            open_round.bytes_in += upload.nbytes
            upload.end()
            self.events.record(
                "upload_accepted",
                upload.silo,
                job=open_round.job_id,
                round=open_round.round,
                bytes=upload.nbytes,
                chunks=upload.added,
                digest=upload.digest,
                profile=upload.manifest.profile,
                audit_head=upload.audit_head,
            )
            receipt = UploadReceipt(
                open_round.job_id, open_round.round, upload.added, upload.nbytes, upload.digest, self.events.head
            )
            if self.expected_contributors(open_round.job_id, open_round.spec) <= set(open_round.contributors):
                self._close(open_round, "all participants reported")
            self.feed.bump()
            return receipt

    # ------------------------------------------------------------------ closing rounds
    def tick(self, now: float | None = None) -> None:
        """Close every round whose deadline has passed."""
        now = self.clock.now() if now is None else now
        with self.lock:
            for open_round in list(self._open.values()):
                if now >= open_round.deadline and not open_round.closing:
                    self._close(open_round, "deadline reached")
            if self.secagg.tick(now):
                self.feed.bump()

    def _close(self, open_round: OpenRound, why: str) -> None:
        for upload in list(open_round.uploads):  # uploads still streaming are left out, exactly
            upload.cancel(
                f"round {open_round.round} of {open_round.job_id} closed ({why}) before this upload completed"
            )
        vote = LayoutVote.count(open_round)
        now = self.clock.now()
        if vote.tie:
            tie = f"no layout leads, {vote.top} contributors each; competing layouts: {vote.describe(open_round)}"
            self._fail(open_round, sorted(open_round.contributors), why, tie, now)
            self.feed.bump()
            return
        winner, contributors = vote.winner, vote.contributors
        release = evaluate_release(self.policies.min_per_aggregate(), contributors)
        self.events.record(
            "policy_decision", "aggregator", job=open_round.job_id, round=open_round.round, **release.as_details()
        )
        quorum = len(contributors) >= self.required(open_round.spec)
        if quorum and release.allowed and winner is not None:
            for details in vote.outvoted(open_round):
                self.events.record(
                    "layout_outvoted", "aggregator", job=open_round.job_id, round=open_round.round, **details
                )
            if not self.secagg.closing(open_round, winner, contributors, why, now):
                self._release(open_round, winner, contributors, why, now)
        else:
            reason = release.reasons[0] if not release.allowed else None
            if len(vote.groups) > 1:
                short = f"{len(contributors)} of the required {self.required(open_round.spec)} silos contributed"
                reason = f"{reason or short + ' in the leading layout'}; competing layouts: {vote.describe(open_round)}"
            self._fail(open_round, contributors, why, reason, now)
        self.feed.bump()

    def _release(
        self, open_round: OpenRound, layout: Any, contributors: list[str], why: str, now: float, unmasking: bytes = b""
    ) -> None:
        """Write the sum of the winning layout (with the unmasking record of a masked sum), record it, and open
        the next round or complete the job."""
        job_id, round_index, spec = open_round.job_id, open_round.round, open_round.spec
        chunks = open_round.staging[layout].serialize()
        m = open_round.committed[layout]
        manifest = Manifest(
            m.profile,
            m.fingerprint,
            m.layout,
            m.value_count,
            m.values_per_chunk,
            m.scale_bits,
            tuple(chunk_digest(c) for c in chunks),
            m.quantization,
        )
        where, out_bytes = self.archive.write(job_id, round_index, manifest, chunks, unmasking)
        self.store.update_round(
            job_id,
            round_index,
            status=RoundStatus.CLOSED,
            closed_at=now,
            bytes_in=open_round.bytes_in,
            contributors=len(contributors),
            aggregate_path=where,
            reason=why,
        )
        self.events.record(
            "aggregate_released",
            "aggregator",
            job=job_id,
            round=round_index,
            contributors=contributors,
            bytes_in=open_round.bytes_in,
            bytes_out=out_bytes,
            wall_s=round(now - open_round.opened_at, 3),
            why=why,
        )
        del self._open[job_id]
        if round_index + 1 < spec.total_rounds:
            self._open_round(job_id, spec, round_index + 1, 1, now)
        else:
            self.store.update_job(job_id, status=JobStatus.COMPLETED, reason=f"{spec.rounds_description} completed")
            self.events.record("job_completed", "aggregator", job=job_id, rounds=spec.total_rounds)

    def _fail(
        self, open_round: OpenRound, contributors: list[str], why: str, policy_reason: str | None, now: float
    ) -> None:
        """No aggregate: retry the round, or fail the job once its retries are spent."""
        job_id, round_index, spec = open_round.job_id, open_round.round, open_round.spec
        if policy_reason is not None:  # the consortium's release threshold, in its own words
            reason = f"round {round_index}: {policy_reason} ({why})"
        else:
            reason = (
                f"round {round_index}: {len(contributors)} of the required {self.required(spec)} silos contributed "
                f"({why}); no aggregate released"
            )
        self.store.clear_contributions(job_id, round_index)
        self.events.record(
            "round_failed",
            "aggregator",
            job=job_id,
            round=round_index,
            attempt=open_round.attempt,
            contributors=contributors,
            reason=reason,
        )
        if open_round.attempt <= spec.max_round_retries:
            self._open_round(job_id, spec, round_index, open_round.attempt + 1, now)
        else:
            self.end_job(job_id, JobStatus.FAILED, f"{reason}; gave up after {open_round.attempt} attempts")
            self.events.record("job_failed", "aggregator", job=job_id, reason=reason)

    # ------------------------------------------------------------------ declines and released rounds
    def declined(self, job_id: str, round_index: int, silo: str, reasons: list[str], spec: JobSpec) -> None:
        """A participant declined the job (round -1) or one round: close or fail what it leaves short."""
        with self.lock:
            open_round = self._open.get(job_id)
            if open_round is not None:
                expected = self.expected_contributors(job_id, spec)
                if len(expected) < self.required(spec):
                    self.end_job(
                        job_id,
                        JobStatus.FAILED,
                        f"too few participants left after {silo} declined: {'; '.join(reasons)}",
                    )
                elif open_round.closing:
                    pass  # unmasking: the contributor set is fixed
                elif open_round.contributors and expected <= set(open_round.contributors):
                    self._close(open_round, "all remaining participants reported")
                elif round_index >= 0 and open_round.round == round_index and len(expected) < self.required(spec):
                    self._close(open_round, f"too few participants left for this round after {silo} declined it")
            self.feed.bump()

    def released(self, job_id: str, round_index: int) -> tuple[str, int] | None:
        """Where a round's aggregate is, and how many contributed; None unless it was released."""
        row = self.store.round(job_id, round_index)
        if row is None or row.status != RoundStatus.CLOSED or not row.aggregate_path:
            return None
        return row.aggregate_path, row.contributors
