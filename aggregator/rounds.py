"""Jobs and their rounds: the state machine that decides when an aggregate may be released.

A round is open until every (non-declining) participant has uploaded, or until its deadline.
At the deadline it closes with the contributors it has if they reach the quorum, and otherwise
fails and is reopened (up to the job's retry limit) or fails the job with the reason. Uploads are
added in place into the round's accumulator as their chunks arrive; an upload that breaks off or
turns out bad halfway is subtracted again, so a round never contains part of an upload.
"""

from __future__ import annotations

import secrets
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc
from cryptography import x509

from aggregator.aggregate_files import write_aggregate
from aggregator.errors import Refusal
from aggregator.keyring import PublicKeyring
from aggregator.limits import check_metrics
from aggregator.store import JobRow, StateStore
from audit.events import EventSink
from crypto.engine import PLAIN_FINGERPRINT, Accumulator, ChunkVerifier
from crypto.errors import CryptoError, SignatureError
from crypto.keys import PublicContext
from crypto.packing import Manifest, chunk_digest
from crypto.pki import Identity
from crypto.signing import update_digest, verify_digest
from policies.evaluate import evaluate_member, evaluate_release, evaluate_submission
from policies.schema import ConsortiumPolicy, PolicyFile
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import KEYED_PROFILES, JobSpec, job_spec_from_json, parse_job_spec
from protocol.messages import MAX_CHUNK_BYTES, manifest_from_proto
from protocol.names import safe_job_id
from protocol.tomlconfig import ConfigError

RUNNING, COMPLETED, FAILED, ABORTED = "running", "completed", "failed", "aborted"
OPEN, CLOSED = "open", "closed"
Code = grpc.StatusCode


@dataclass
class OpenRound:
    job_id: str
    round: int
    attempt: int
    opened_at: float
    deadline: float
    spec: JobSpec
    public: PublicContext | None
    manifest: Manifest | None = None  # the layout of the first committed upload: fixed for the round
    accumulator: Accumulator | None = None
    staging: dict[Any, Accumulator] = field(default_factory=dict)  # layout -> sum, until an upload commits
    contributors: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # silo -> digest, bytes, head
    sessions: set[UploadSession] = field(default_factory=set)
    bytes_in: int = 0


class UploadSession:
    """One silo's upload in flight. Chunks are added as they arrive and kept on a spool file so
    that they can be subtracted again if the upload does not complete."""

    def __init__(
        self,
        engine: JobEngine,
        round_: OpenRound,
        silo: str,
        manifest: Manifest,
        audit_head: str,
        accumulator: Accumulator,
    ) -> None:
        self._engine = engine
        self.round = round_
        self.accumulator = accumulator  # the round's sum, or the staging sum of this layout
        self.silo = silo
        self.manifest = manifest
        self.audit_head = audit_head
        self.digest = manifest.digest().hex()
        self._verifier = ChunkVerifier(
            round_.public, manifest, round_.public.fingerprint if round_.public else PLAIN_FINGERPRINT
        )
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=engine.spool_dir)  # noqa: SIM115 - closed in _end
        self.added = 0
        self.nbytes = 0
        self.cancelled: str | None = None
        self.done = False

    def add_chunk(self, data: bytes) -> None:
        if len(data) > MAX_CHUNK_BYTES:
            raise Refusal(Code.INVALID_ARGUMENT, f"chunk of {len(data)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit")
        if self.added >= self.manifest.chunk_count:
            raise Refusal(
                Code.INVALID_ARGUMENT,
                f"upload is larger than its manifest: more than {self.manifest.chunk_count} chunks",
            )
        try:
            loaded = self._verifier.load(self.added, data)
        except CryptoError as exc:
            raise Refusal(Code.INVALID_ARGUMENT, f"chunk {self.added} rejected: {exc}") from None
        with self._engine.lock:
            if self.cancelled:
                raise Refusal(Code.ABORTED, self.cancelled)
            self.accumulator.add(self.added, loaded)
            self._spool.write(struct.pack(">I", len(data)) + data)
            self.added += 1
            self.nbytes += len(data)

    def commit(self) -> pb.UploadReceipt:
        try:
            self._verifier.finish()
        except CryptoError as exc:
            raise Refusal(Code.INVALID_ARGUMENT, str(exc)) from None
        return self._engine._commit(self)

    def rollback(self) -> None:
        """Subtract every chunk this upload added (reloaded from the spool). Idempotent."""
        with self._engine.lock:
            if self.done:
                return
            if self.added and self._shared():
                self._spool.seek(0)
                undo = ChunkVerifier(
                    self.round.public,
                    self.manifest,
                    self.round.public.fingerprint if self.round.public else PLAIN_FINGERPRINT,
                )
                for index in range(self.added):
                    (length,) = struct.unpack(">I", self._spool.read(4))
                    self.accumulator.subtract(index, undo.load(index, self._spool.read(length)))
            self._end()

    def _shared(self) -> bool:
        """Does any other upload, or the round itself, still use this session's accumulator?"""
        return self.accumulator is self.round.accumulator or any(
            s.accumulator is self.accumulator for s in self.round.sessions if s is not self
        )

    def _end(self) -> None:
        self.done = True
        if self.round.manifest is None and not self._shared():  # nothing committed: leave no trace
            self.round.staging.pop(self.manifest.layout_key(), None)
        self.round.sessions.discard(self)
        self._spool.close()


class JobEngine:
    def __init__(
        self,
        store: StateStore,
        keyring: PublicKeyring,
        state_dir: Path,
        events: EventSink,
        min_per_aggregate: int = 2,
        policy: ConsortiumPolicy | PolicyFile | None = None,
        max_update_values: int = 1 << 28,
        allow_plaintext: bool = False,
        allowed_factories: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.max_update_values = max_update_values
        # Used only without a consortium policy (which then decides): both refused unless opted in.
        self.allow_plaintext = allow_plaintext
        self.allowed_factories = allowed_factories
        self.keyring = keyring
        self.events = events
        self._policy_source = policy
        self._default_min_per_aggregate = min_per_aggregate
        self.aggregates_dir = state_dir / "aggregates"
        self.spool_dir = state_dir / "spool"
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.version = 1
        self._open: dict[str, OpenRound] = {}
        self._specs: dict[str, JobSpec] = {}
        self._recover()

    # ------------------------------------------------------------------ lifecycle
    def _recover(self) -> None:
        """Reopen the current round of every running job; its in-memory sum was lost with the process."""
        now = time.time()
        for job in self.store.jobs(RUNNING):
            try:
                spec = self.spec(job.job_id)
            except Refusal as exc:  # one unreadable stored job must not stop the aggregator
                self._fail_unreadable(job.job_id, exc.message)
                continue
            if spec.partition != "horizontal":  # vertical jobs have no rounds: their parties drive them
                continue
            self.store.clear_contributions(job.job_id, job.current_round)
            row = self.store.round(job.job_id, job.current_round)
            attempt = row.attempt if row else 1
            self._open_round(job.job_id, spec, job.current_round, attempt, now)
            self.events.record(
                "round_reopened",
                "aggregator",
                job=job.job_id,
                round=job.current_round,
                reason="aggregator restarted; contributors must re-upload",
            )

    def _fail_unreadable(self, job_id: str, reason: str) -> None:
        """Fail a stored job whose spec no longer validates (written by an older version, or tampered)."""
        message = f"stored job spec is not valid, job failed at restart: {reason}"[:2000]
        self.store.update_job(job_id, status=FAILED, reason=message)
        self.events.record("job_failed", "aggregator", job=job_id, reason=message)

    @property
    def policy(self) -> ConsortiumPolicy | None:
        """The consortium policy in force now: a PolicyFile is re-read when its file changes."""
        source = self._policy_source
        return source.current() if isinstance(source, PolicyFile) else source

    @property
    def min_per_aggregate(self) -> int:
        policy = self.policy
        return policy.min_silos_per_aggregate if policy else self._default_min_per_aggregate

    def spec(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            row = self.store.job(job_id)
            if row is None:
                raise Refusal(Code.NOT_FOUND, f"unknown job {job_id!r}")
            try:
                spec = job_spec_from_json(row.spec_json, f"stored spec of job {job_id}")
            except ConfigError as exc:
                problems = "; ".join(f"{f}: {r}" for f, r in exc.problems)
                raise Refusal(Code.FAILED_PRECONDITION, f"job {job_id}: invalid stored spec ({problems})") from None
            self._specs[job_id] = spec
        return spec

    def _bump(self) -> None:
        self.version += 1
        self.changed.notify_all()

    def wait_for_change(self, known_version: int, timeout_s: float) -> int:
        with self.changed:
            if known_version == self.version:
                self.changed.wait(timeout_s)
            return self.version

    # ------------------------------------------------------------------ jobs
    def submit(self, spec_toml: str, submitter_identity: Identity) -> str:
        submitter = submitter_identity.name
        try:
            spec = parse_job_spec(spec_toml, "job spec")
        except ConfigError as exc:
            raise Refusal(Code.INVALID_ARGUMENT, str(exc)) from None
        policy = self.policy  # one read: a reload mid-decision must not mix two versions
        if policy is not None:
            decision = evaluate_submission(policy, spec, submitter, submitter_identity.fingerprint)
            self.events.record("policy_decision", submitter, name=spec.name, **decision.as_details())
            if not decision.allowed:
                raise Refusal(
                    Code.PERMISSION_DENIED, "consortium policy refuses this job: " + "; ".join(decision.reasons)
                )
        if self.policy is None and spec.model.type == "factory" and spec.model.factory not in self.allowed_factories:
            raise Refusal(
                Code.PERMISSION_DENIED,
                f"model.factory: {spec.model.factory!r} is not in this aggregator's allowed_factories "
                f"({', '.join(self.allowed_factories) or 'none listed'}); silos run only code their site policy names",
            )
        if self.policy is None and spec.he_profile == "none" and not self.allow_plaintext:
            raise Refusal(
                Code.PERMISSION_DENIED,
                "he_profile: 'none' sends plaintext updates through the aggregator and is refused; use 'sum', or "
                "set allow_plaintext_jobs = true in aggregator.toml (or allow 'none' in the consortium policy) "
                "for a comparison run",
            )
        if spec.he_profile in KEYED_PROFILES and self.keyring.get(spec.key_fingerprint or "") is None:
            known = ", ".join(self.keyring.fingerprints()) or "none"
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"no public context with fingerprint {spec.key_fingerprint} is registered here; the key "
                f"custodian must run `cipherfed keys create` (known: {known})",
            )
        if spec.partition == "horizontal" and max(spec.min_silos, self.min_per_aggregate) > len(spec.participants):
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"the consortium releases no aggregate with fewer than {self.min_per_aggregate} contributors, "
                f"but the job lists {len(spec.participants)} participants",
            )
        job_id = safe_job_id(f"{spec.name}-{secrets.token_hex(3)}")  # silos use it as a directory name
        now = time.time()
        with self.lock:
            self.store.insert_job(
                JobRow(job_id, spec.name, spec.model_dump_json(), RUNNING, "", 0, spec.total_rounds, submitter, now)
            )
            self._specs[job_id] = spec
            if spec.partition == "horizontal":  # vertical jobs are run by their parties; we relay and sum
                self._open_round(job_id, spec, 0, 1, now)
            self._bump()
        self.events.record(
            "job_submitted",
            submitter,
            job=job_id,
            name=spec.name,
            participants=spec.participants,
            he_profile=spec.he_profile,
            rounds=spec.total_rounds,
            min_silos=spec.min_silos,
        )
        return job_id

    def abort(self, job_id: str, reason: str, by: str) -> None:
        with self.lock:
            row = self.store.job(job_id)
            if row is None:
                raise Refusal(Code.NOT_FOUND, f"unknown job {job_id!r}")
            if row.status != RUNNING:
                raise Refusal(Code.FAILED_PRECONDITION, f"job {job_id} is already {row.status}")
            self._end_job(job_id, ABORTED, f"aborted by {by}: {reason or 'no reason given'}")
        self.events.record("job_aborted", by, job=job_id, reason=reason)

    def _end_job(self, job_id: str, status: str, reason: str) -> None:
        open_round = self._open.pop(job_id, None)
        if open_round is not None:
            for session in list(open_round.sessions):
                session.cancelled = f"job {job_id} is {status}"
                session.rollback()
            self.store.update_round(job_id, open_round.round, status=status, reason=reason, closed_at=time.time())
        self.store.update_job(job_id, status=status, reason=reason)
        self._bump()

    def _open_round(self, job_id: str, spec: JobSpec, round_index: int, attempt: int, now: float) -> None:
        public = self.keyring.get(spec.key_fingerprint or "") if spec.he_profile in KEYED_PROFILES else None
        deadline = now + spec.round_timeout_s
        self._open[job_id] = OpenRound(job_id, round_index, attempt, now, deadline, spec, public)
        self.store.upsert_round(job_id, round_index, OPEN, attempt, now, deadline)
        self.store.update_job(job_id, current_round=round_index)
        self.events.record(
            "round_opened",
            "aggregator",
            job=job_id,
            round=round_index,
            attempt=attempt,
            deadline_s=spec.round_timeout_s,
        )

    def expected_contributors(self, job_id: str, spec: JobSpec) -> set[str]:
        """Participants still expected this round: not those that declined the job or this round."""
        open_round = self._open.get(job_id)
        declined = set(self.store.declines(job_id))
        if open_round is not None:
            declined |= set(self.store.declines(job_id, open_round.round))
        return set(spec.participants) - declined

    # ------------------------------------------------------------------ uploads
    def begin_upload(
        self, silo: Identity, cert: x509.Certificate, header: pb.UploadHeader
    ) -> UploadSession | pb.UploadReceipt:
        job_id, round_index = header.job_id, int(header.round)
        with self.lock:
            row = self.store.job(job_id)
            if row is None:
                raise Refusal(Code.NOT_FOUND, f"unknown job {job_id!r}")
            spec = self.spec(job_id)
            if silo.name not in spec.participants:
                raise Refusal(Code.PERMISSION_DENIED, f"{silo.name} is not a participant of job {job_id}")
            policy = self.policy
            if policy is not None:
                decision = evaluate_member(policy, silo.name, silo.fingerprint, f"upload round {round_index}")
                self.events.record("policy_decision", silo.name, job=job_id, round=round_index, **decision.as_details())
                if not decision.allowed:
                    raise Refusal(Code.PERMISSION_DENIED, "; ".join(decision.reasons))
            if row.status != RUNNING:
                raise Refusal(Code.FAILED_PRECONDITION, f"job {job_id} is {row.status}; it takes no uploads")
            open_round = self._open.get(job_id)
            if open_round is None:
                raise Refusal(Code.FAILED_PRECONDITION, f"job {job_id} has no open round")
            if round_index < open_round.round:
                raise Refusal(
                    Code.FAILED_PRECONDITION,
                    f"round {round_index} of job {job_id} is closed (replay?); the open round is {open_round.round}",
                )
            if round_index > open_round.round:
                raise Refusal(
                    Code.FAILED_PRECONDITION,
                    f"round {round_index} of job {job_id} is not open; the open round is {open_round.round}",
                )
        self._check_declared_size(header.manifest)
        try:
            manifest = manifest_from_proto(header.manifest)
        except CryptoError as exc:
            raise Refusal(Code.INVALID_ARGUMENT, f"manifest rejected: {exc}") from None
        digest = update_digest(job_id, round_index, manifest.fingerprint, manifest.digest(), header.audit_head)
        try:
            verify_digest(cert, digest, bytes(header.signature))
        except SignatureError as exc:
            raise Refusal(Code.PERMISSION_DENIED, f"upload signature rejected: {exc}") from None
        expected_fp = spec.key_fingerprint if spec.he_profile in KEYED_PROFILES else PLAIN_FINGERPRINT
        if manifest.fingerprint != expected_fp or manifest.profile != spec.he_profile:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"upload is under key {manifest.fingerprint} ({manifest.profile}); job {job_id} uses "
                f"{expected_fp} ({spec.he_profile})",
            )
        with self.lock:
            open_round = self._open.get(job_id)
            if open_round is None or open_round.round != round_index:
                raise Refusal(Code.FAILED_PRECONDITION, f"round {round_index} of job {job_id} closed meanwhile")
            previous = open_round.contributors.get(silo.name)
            if previous is not None:
                if previous[0] == manifest.digest().hex():
                    return pb.UploadReceipt(
                        job_id=job_id,
                        round=round_index,
                        chunks=manifest.chunk_count,
                        bytes=previous[1],
                        already_received=True,
                        digest=previous[0],
                    )
                raise Refusal(
                    Code.ALREADY_EXISTS,
                    f"duplicate upload: {silo.name} already contributed to round {round_index} of {job_id}",
                )
            if any(s.silo == silo.name for s in open_round.sessions):
                raise Refusal(Code.ALREADY_EXISTS, f"{silo.name} already has an upload in progress for this round")
            if open_round.manifest is not None and open_round.accumulator is not None:
                if open_round.manifest.layout_key() != manifest.layout_key():
                    raise Refusal(
                        Code.INVALID_ARGUMENT,
                        "upload layout (tensors, sizes, scale) differs from the contributions already accepted "
                        "in this round",
                    )
                accumulator = open_round.accumulator
            else:  # nothing committed yet: an unfinished upload fixes nothing, each layout sums apart
                accumulator = open_round.staging.get(manifest.layout_key()) or Accumulator(
                    open_round.public, manifest.chunk_count
                )
                open_round.staging[manifest.layout_key()] = accumulator
            session = UploadSession(self, open_round, silo.name, manifest, header.audit_head, accumulator)
            open_round.sessions.add(session)
            return session

    def _check_declared_size(self, manifest: pb.Manifest) -> None:
        """Refuse an absurd declared size before anything is allocated for it."""
        limit = self.max_update_values
        if manifest.value_count > limit:
            raise Refusal(
                Code.INVALID_ARGUMENT,
                f"manifest.value_count: {manifest.value_count} values declared; this aggregator accepts at most "
                f"{limit} per upload (config max_update_values)",
            )

    def _commit(self, session: UploadSession) -> pb.UploadReceipt:
        with self.lock:
            if session.cancelled:
                raise Refusal(Code.ABORTED, session.cancelled)
            open_round = session.round
            if open_round.manifest is None:  # the first committed upload fixes the round's layout
                self._fix_layout(open_round, session)
            self.store.add_contribution(
                open_round.job_id, open_round.round, session.silo, session.digest, session.nbytes, session.audit_head
            )
            open_round.contributors[session.silo] = (session.digest, session.nbytes, session.audit_head)
            open_round.bytes_in += session.nbytes
            session._end()
            self.events.record(
                "upload_accepted",
                session.silo,
                job=open_round.job_id,
                round=open_round.round,
                bytes=session.nbytes,
                chunks=session.added,
                digest=session.digest,
                profile=session.manifest.profile,
                audit_head=session.audit_head,
            )
            receipt_head = self.events.head
            receipt = pb.UploadReceipt(
                job_id=open_round.job_id,
                round=open_round.round,
                chunks=session.added,
                bytes=session.nbytes,
                digest=session.digest,
                aggregator_audit_head=receipt_head,
            )
            expected = self.expected_contributors(open_round.job_id, open_round.spec)
            if expected <= set(open_round.contributors):
                self._close(open_round, "all participants reported")
            self._bump()
            return receipt

    def _fix_layout(self, open_round: OpenRound, session: UploadSession) -> None:
        open_round.manifest, open_round.accumulator = session.manifest, session.accumulator
        open_round.staging.clear()
        for other in list(open_round.sessions):  # uploads of another layout can never be added now
            if other.accumulator is not session.accumulator:
                other.cancelled = (
                    f"an upload with another layout (tensors, sizes, scale) was accepted first in round "
                    f"{open_round.round} of {open_round.job_id}"
                )
                other.rollback()

    # ------------------------------------------------------------------ closing rounds
    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            for open_round in list(self._open.values()):
                if now >= open_round.deadline:
                    self._close(open_round, "deadline reached")

    def _required(self, spec: JobSpec) -> int:
        return max(spec.min_silos, self.min_per_aggregate)

    def _close(self, open_round: OpenRound, why: str) -> None:
        job_id, round_index, spec = open_round.job_id, open_round.round, open_round.spec
        for session in list(open_round.sessions):  # uploads still streaming are left out, exactly
            session.cancelled = f"round {round_index} of {job_id} closed ({why}) before this upload completed"
            session.rollback()
        contributors = sorted(open_round.contributors)
        required = self._required(spec)
        now = time.time()
        release = evaluate_release(self.min_per_aggregate, contributors)
        self.events.record("policy_decision", "aggregator", job=job_id, round=round_index, **release.as_details())
        quorum = len(contributors) >= required
        if quorum and release.allowed and open_round.accumulator is not None and open_round.manifest is not None:
            chunks = open_round.accumulator.serialize()
            m = open_round.manifest
            manifest = Manifest(
                m.profile,
                m.fingerprint,
                m.layout,
                m.value_count,
                m.values_per_chunk,
                m.scale_bits,
                tuple(chunk_digest(c) for c in chunks),
            )
            path = self.aggregates_dir / job_id / f"round-{round_index:05d}.agg"
            out_bytes = write_aggregate(path, manifest, chunks)
            self.store.update_round(
                job_id,
                round_index,
                status=CLOSED,
                closed_at=now,
                bytes_in=open_round.bytes_in,
                contributors=len(contributors),
                aggregate_path=str(path),
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
                self.store.update_job(job_id, status=COMPLETED, reason=f"{spec.rounds_description} completed")
                self.events.record("job_completed", "aggregator", job=job_id, rounds=spec.total_rounds)
        else:
            if not release.allowed:  # the consortium's release threshold, in its own words
                reason = f"round {round_index}: {release.reasons[0]} ({why})"
            else:
                reason = (
                    f"round {round_index}: {len(contributors)} of the required {required} silos contributed "
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
                self._end_job(job_id, FAILED, f"{reason}; gave up after {open_round.attempt} attempts")
                self.events.record("job_failed", "aggregator", job=job_id, reason=reason)
        self._bump()

    # ------------------------------------------------------------------ queries
    def tasks_for(self, silo: str) -> list[pb.Task]:
        tasks = []
        with self.lock:
            for row in self.store.jobs():
                try:
                    spec = self.spec(row.job_id)
                except Refusal:  # an unreadable stored job (failed at restart) is offered to no one
                    continue
                if silo not in spec.participants:
                    continue
                open_round = self._open.get(row.job_id)
                completed = sum(1 for r in self.store.rounds(row.job_id) if r.status == CLOSED)
                tasks.append(
                    pb.Task(
                        job_id=row.job_id,
                        spec_json=row.spec_json,
                        job_status=row.status,
                        round=row.current_round,
                        round_status=OPEN if open_round else CLOSED,
                        completed_rounds=completed,
                        uploaded=bool(open_round and silo in open_round.contributors),
                        deadline_unix_ms=int(open_round.deadline * 1000) if open_round else 0,
                        reason=row.reason,
                        declined=silo in self.store.declines(row.job_id),
                    )
                )
        return tasks

    def aggregate_path(self, job_id: str, round_index: int, silo: str) -> tuple[Path, int]:
        spec = self.spec(job_id)
        if silo not in spec.participants:
            raise Refusal(Code.PERMISSION_DENIED, f"{silo} is not a participant of job {job_id}")
        row = self.store.round(job_id, round_index)
        if row is None or row.status != CLOSED or not row.aggregate_path:
            raise Refusal(Code.FAILED_PRECONDITION, f"round {round_index} of job {job_id} has no released aggregate")
        return Path(row.aggregate_path), row.contributors

    def report_metrics(
        self, job_id: str, round_index: int, silo: str, metrics: dict[str, float], audit_head: str = ""
    ) -> None:
        spec = self.spec(job_id)
        if silo not in spec.participants:
            raise Refusal(Code.PERMISSION_DENIED, f"{silo} is not a participant of job {job_id}")
        metrics = check_metrics(metrics)
        if not 0 <= round_index < spec.total_rounds:
            raise Refusal(
                Code.INVALID_ARGUMENT,
                f"round: {round_index} is not a round of job {job_id} (0-{spec.total_rounds - 1})",
            )
        self._check_metrics_round(job_id, spec, round_index, silo)
        with self.lock:  # one report per silo and round: a repeat is accepted only if identical
            previous = self.store.metrics_of(job_id, round_index, silo)
            if previous:
                if previous == metrics:
                    return
                raise Refusal(
                    Code.ALREADY_EXISTS, f"{silo} already reported metrics for round {round_index} of job {job_id}"
                )
            self.store.put_metrics(job_id, round_index, silo, metrics)
        self.events.record(
            "metrics_reported", silo, job=job_id, round=round_index, metrics=metrics, audit_head=audit_head
        )
        with self.lock:
            self._bump()

    def _check_metrics_round(self, job_id: str, spec: JobSpec, round_index: int, silo: str) -> None:
        """Metrics describe a model the silo holds: a released aggregate (horizontal), or an epoch the
        active party trained (vertical, which has no aggregation rounds)."""
        if spec.partition == "vertical":
            row = self.store.job(job_id)
            if spec.vertical is None or silo != spec.vertical.active:
                raise Refusal(Code.PERMISSION_DENIED, "only the active party reports the epochs of a vertical job")
            if row is None or row.status != RUNNING:
                raise Refusal(Code.FAILED_PRECONDITION, f"job {job_id} is not running")
            return
        found = self.store.round(job_id, round_index)
        if found is None or found.status != CLOSED or not found.aggregate_path:
            raise Refusal(
                Code.FAILED_PRECONDITION,
                f"round {round_index} of job {job_id} has released no aggregate; metrics are reported after it",
            )

    def decline(self, job_id: str, round_index: int, silo: str, reasons: list[str]) -> None:
        spec = self.spec(job_id)
        if silo not in spec.participants:
            raise Refusal(Code.PERMISSION_DENIED, f"{silo} is not a participant of job {job_id}")
        self.store.add_decline(job_id, silo, round_index, reasons)
        self.events.record("job_declined", silo, job=job_id, round=round_index, reasons=reasons)
        row = self.store.job(job_id)
        if spec.partition == "vertical" and row is not None and row.status == RUNNING:
            with self.lock:  # every party holds columns the model needs: one refusal ends the job
                self._end_job(job_id, FAILED, f"{silo} declined: {'; '.join(reasons)}")
            return
        with self.lock:
            open_round = self._open.get(job_id)
            if open_round is not None:
                expected = self.expected_contributors(job_id, spec)
                if len(expected) < self._required(spec):
                    self._end_job(
                        job_id, FAILED, f"too few participants left after {silo} declined: {'; '.join(reasons)}"
                    )
                elif open_round.contributors and expected <= set(open_round.contributors):
                    self._close(open_round, "all remaining participants reported")
                elif round_index >= 0 and open_round.round == round_index and len(expected) < self._required(spec):
                    self._close(open_round, f"too few participants left for this round after {silo} declined it")
            self._bump()

    def finish_vertical(self, job_id: str, party: str, ok: bool, reason: str, metrics: dict[str, float]) -> None:
        spec = self.spec(job_id)
        if spec.vertical is None or party != spec.vertical.active:
            raise Refusal(Code.PERMISSION_DENIED, "only the active party of a vertical job can finish it")
        row = self.store.job(job_id)
        if row is None or row.status != RUNNING:
            raise Refusal(Code.FAILED_PRECONDITION, f"job {job_id} is not running")
        if metrics:
            self.store.put_metrics(job_id, spec.rounds, party, metrics)
        status = COMPLETED if ok else FAILED
        with self.lock:
            self.store.update_job(job_id, status=status, reason=reason, current_round=spec.rounds)
            self._bump()
        self.events.record("job_completed" if ok else "job_failed", party, job=job_id, reason=reason, metrics=metrics)

    def status(self, job_id: str) -> pb.JobStatus:
        row = self.store.job(job_id)
        if row is None:
            raise Refusal(Code.NOT_FOUND, f"unknown job {job_id!r}")
        spec = self.spec(job_id)
        metrics = self.store.metrics(job_id)
        rounds = []
        if spec.partition == "vertical":  # no aggregation rounds: show the active party's epochs
            for epoch, by_silo in sorted(metrics.items()):
                if epoch < spec.rounds:
                    rounds.append(
                        pb.RoundStatus(
                            round=epoch,
                            status="trained",
                            contributors=sorted(spec.participants),
                            metrics=[pb.SiloMetrics(silo=s, metrics=m) for s, m in by_silo.items()],
                        )
                    )
        for r in self.store.rounds(job_id):
            with self.lock:
                open_round = self._open.get(job_id)
                live = open_round if open_round and open_round.round == r.round else None
                names = sorted(live.contributors) if live else sorted(self.store.contributions(job_id, r.round))
                bytes_in = live.bytes_in if live else r.bytes_in
            end = r.closed_at or time.time()
            rounds.append(
                pb.RoundStatus(
                    round=r.round,
                    status=r.status,
                    attempt=r.attempt,
                    contributors=names,
                    bytes_in=bytes_in,
                    wall_s=end - r.opened_at,
                    reason=r.reason,
                    metrics=[pb.SiloMetrics(silo=s, metrics=m) for s, m in sorted(metrics.get(r.round, {}).items())],
                )
            )
        return pb.JobStatus(
            job_id=job_id,
            name=row.name,
            status=row.status,
            reason=row.reason,
            rounds_total=row.rounds_total,
            current_round=row.current_round,
            rounds=rounds,
            spec_json=row.spec_json,
            participants=spec.participants,
            submitted_by=row.submitted_by,
            declined=sorted(self.store.declines(job_id)),
            relay_bytes=self.store.relay_bytes(job_id),
        )

    def list_jobs(self) -> list[Any]:
        return [
            pb.JobSummary(
                job_id=r.job_id,
                name=r.name,
                status=r.status,
                current_round=r.current_round,
                rounds_total=r.rounds_total,
                created=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created)),
            )
            for r in self.store.jobs()
        ]
