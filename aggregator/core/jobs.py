"""Jobs: submitted, polled, declined, reported on, aborted. The one entry point of the core.

``Jobs`` checks who may do what, keeps the specs, and hands each job to the part that runs it: the
round core (``core.rounds``) for horizontal jobs, ``core.vertical`` for vertical ones, whose parties
drive them while the aggregator relays and sums. Nothing here knows about gRPC: the edge
(``aggregator.edge``) converts messages into these calls and domain errors into status codes.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography import x509

from aggregator.core.clock import Clock, SystemClock
from aggregator.core.errors import (
    AlreadyExists,
    Forbidden,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)
from aggregator.core.keys import KeyDirectory
from aggregator.core.rounds import RoundCore
from aggregator.core.secagg_session import AggregatorCredentials
from aggregator.core.shared import ChangeFeed, PolicyInForce, Specs, bounded_send, wait_for_mail
from aggregator.core.store_contract import AggregateArchive, JobRow, JobStore
from aggregator.core.vertical import VerticalJobs
from aggregator.core.views import (
    DeclineView,
    JobStatusView,
    JobSummary,
    RelayDelivery,
    RelayOffer,
    ReleasedAggregate,
    RoundView,
    TaskView,
    UploadOffer,
    UploadReceipt,
)
from aggregator.keyring import PublicKeyring
from aggregator.limits import check_job_id, check_metrics, check_name
from audit.events import EventSink
from crypto.pki import Identity
from policies.evaluate import evaluate_submission
from policies.schema import ConsortiumPolicy, PolicyFile
from protocol.jobspec import KEYED_PROFILES, JobSpec, parse_job_spec
from protocol.names import safe_job_id
from protocol.tomlconfig import ConfigError
from protocol.vocabulary import JobStatus, RoundStatus, SecAggKind

SECAGG_KINDS = frozenset(str(k) for k in SecAggKind)


class Jobs:
    def __init__(
        self,
        store: JobStore,
        archive: AggregateArchive,
        keyring: PublicKeyring,
        state_dir: Path,
        events: EventSink,
        min_per_aggregate: int = 2,
        policy: ConsortiumPolicy | PolicyFile | None = None,
        max_update_values: int = 1 << 28,
        allow_plaintext: bool = False,
        allowed_factories: tuple[str, ...] = (),
        clock: Clock | None = None,
        consortium: str = "",
        credentials: AggregatorCredentials | None = None,
    ) -> None:
        self.store, self.keyring, self.events = store, keyring, events
        self.policies = PolicyInForce(policy, min_per_aggregate)
        self.clock: Clock = clock or SystemClock()
        # Used only without a consortium policy (which then decides): both refused unless opted in.
        self.allow_plaintext = allow_plaintext
        self.allowed_factories = allowed_factories
        self.feed = ChangeFeed()
        self.specs = Specs(store)
        self.rounds = RoundCore(
            store,
            archive,
            keyring,
            events,
            self.clock,
            self.feed,
            state_dir / "spool",
            self.policies,
            max_update_values,
            consortium,
            credentials,
        )
        self.vertical = VerticalJobs(store, self.specs, events, self.clock, self.feed)
        self.keys = KeyDirectory(store, keyring, events, consortium)
        self._recover()

    def _recover(self) -> None:
        """Reopen the current round of every running horizontal job (vertical jobs need nothing)."""
        for job in self.store.jobs(JobStatus.RUNNING):
            try:
                spec = self.specs.get(job.job_id)
            except PreconditionFailed as exc:  # one unreadable stored job must not stop the aggregator
                message = f"stored job spec is not valid, job failed at restart: {exc.message}"[:2000]
                self.store.update_job(job.job_id, status=JobStatus.FAILED, reason=message)
                self.events.record("job_failed", "aggregator", job=job.job_id, reason=message)
                continue
            if spec.partition == "horizontal":
                self.rounds.recover(job.job_id, spec, job.current_round)

    @property
    def version(self) -> int:
        return self.feed.version

    def wait_for_change(self, known_version: int, timeout_s: float) -> int:
        return self.feed.wait(known_version, timeout_s)

    def tick(self, now: float | None = None) -> None:
        self.rounds.tick(now)

    # ------------------------------------------------------------------ relay
    def relay_send(
        self,
        sender: Identity,
        cert: x509.Certificate,
        offers: Iterable[RelayOffer],
        max_messages: int,
        max_bytes: int,
        max_payload: int,
    ) -> int:
        """One Send: a vertical job's messages, or a secure-aggregation round's (one job per Send)."""
        stream = iter(offers)
        first = next(stream, None)
        if first is None:
            return 0
        check_job_id(first.job_id)
        spec = self.specs.get(first.job_id)
        messages = itertools.chain([first], stream)
        if spec.partition == "vertical":
            return self.vertical.send(sender.name, messages, max_messages, max_bytes, max_payload)
        if not spec.secure_aggregation:
            raise Forbidden("relay is for vertical jobs and secure-aggregation rounds")
        count, relayed = 0, []
        round_before, steps_before = self.rounds.open_round(first.job_id), self._secagg_steps(first.job_id)
        try:
            for m in bounded_send(messages, max_messages, max_bytes):
                count += 1
                if m.job_id != first.job_id:
                    raise InvalidArgument("job_id: one Send carries the messages of one secure-aggregation job")
                check_name(m.to, "to")
                check_name(m.kind, "kind")
                with self.feed.lock:
                    secagg = self.rounds.secagg
                    if not secagg.accept(sender, cert, m, spec):  # a share envelope for its holder; never read here
                        secagg.sessions[m.job_id].post(sender.name, m.to, m.kind, m.payload)
                        relayed.append(m.to)
        finally:  # what the accepted messages did stands, even if a later one in the same Send is refused
            if relayed:
                self.rounds.secagg.shares_relayed(sender.name, first.job_id, relayed, first.seq)
            self.rounds.secagg.mail.bump()
            # Released or failed (tasks changed), or a roster or request went out: a silo that stopped
            # waiting for it (it holds its poll loop at most a moment) learns of it from its poll at once.
            if (
                self.rounds.open_round(first.job_id) is not round_before
                or self._secagg_steps(first.job_id) != steps_before
            ):
                self.feed.bump()
        return count

    def _secagg_steps(self, job_id: str) -> tuple[bool, bool] | None:
        """Whether the session in progress has published its roster, and its unmasking request."""
        session = self.rounds.secagg.sessions.get(job_id)
        return None if session is None else (session.roster is not None, session.request_sent)

    def relay_receive(
        self,
        recipient: str,
        job_id: str,
        kind: str,
        seq: int,
        sender: str,
        wait_s: float,
        connected: Callable[[], bool],
    ) -> RelayDelivery:
        """Take the messages of one (kind, seq, sender) addressed to ``recipient`` (any job it is a party of),
        waiting up to ``wait_s``: a vertical job's from the store, a secure-aggregation session's from memory."""
        if kind not in SECAGG_KINDS:
            return self.vertical.receive(recipient, job_id, kind, seq, sender, wait_s, connected)
        if recipient not in self.specs.get(job_id).participants:
            raise Forbidden("not a party of this job")

        def take() -> list[bytes]:
            with self.feed.lock:
                payload = self.rounds.secagg.take(job_id, recipient, kind, seq, sender)
            return [payload] if payload is not None else []

        return RelayDelivery(seq, wait_for_mail(take, self.rounds.secagg.mail, self.clock, wait_s, connected))

    # ------------------------------------------------------------------ submit and abort
    def submit(self, spec_toml: str, submitter_identity: Identity) -> str:
        submitter = submitter_identity.name
        try:
            spec = parse_job_spec(spec_toml, "job spec")
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from None
        self._check_submission(spec, submitter_identity)
        job_id = safe_job_id(f"{spec.name}-{secrets.token_hex(3)}")  # silos use it as a directory name
        with self.feed.lock:
            self.store.insert_job(
                JobRow(
                    job_id,
                    spec.name,
                    spec.model_dump_json(),
                    JobStatus.RUNNING,
                    "",
                    0,
                    spec.total_rounds,
                    submitter,
                    self.clock.now(),
                )
            )
            self.specs.remember(job_id, spec)
            if spec.partition == "horizontal":  # vertical jobs are run by their parties; we relay and sum
                self.rounds.start(job_id, spec)
            self.feed.bump()
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

    def _check_submission(self, spec: JobSpec, submitter: Identity) -> None:
        """Policy (or, without one, this aggregator's opt-ins), a known key, and a reachable quorum."""
        policy = self.policies.current()  # one read: a reload mid-decision must not mix two versions
        if policy is not None:
            decision = evaluate_submission(policy, spec, submitter.name, submitter.fingerprint)
            self.events.record("policy_decision", submitter.name, name=spec.name, **decision.as_details())
            if not decision.allowed:
                raise Forbidden("consortium policy refuses this job: " + "; ".join(decision.reasons))
        if policy is None and spec.model.type == "factory" and spec.model.factory not in self.allowed_factories:
            raise Forbidden(
                f"model.factory: {spec.model.factory!r} is not in this aggregator's allowed_factories "
                f"({', '.join(self.allowed_factories) or 'none listed'}); silos run only code their site policy names",
            )
        if policy is None and spec.he_profile == "none" and not self.allow_plaintext:
            raise Forbidden(
                "he_profile: 'none' sends plaintext updates through the aggregator and is refused; use 'sum', or "
                "set allow_plaintext_jobs = true in aggregator.toml (or allow 'none' in the consortium policy) "
                "for a comparison run",
            )
        if spec.he_profile in KEYED_PROFILES and self.keyring.get(spec.key_fingerprint or "") is None:
            known = ", ".join(self.keyring.fingerprints()) or "none"
            raise PreconditionFailed(
                f"no public context with fingerprint {spec.key_fingerprint} is registered here; the key "
                f"custodian must run `cipherfed keys create` (known: {known})",
            )
        minimum = policy.min_silos_per_aggregate if policy else self.policies.min_per_aggregate()
        if spec.partition == "horizontal" and max(spec.min_silos, minimum) > len(spec.participants):
            raise PreconditionFailed(
                f"the consortium releases no aggregate with fewer than {minimum} contributors, "
                f"but the job lists {len(spec.participants)} participants",
            )

    def abort(self, job_id: str, reason: str, by: str) -> None:
        with self.feed.lock:
            row = self.store.job(job_id)
            if row is None:
                raise NotFound(f"unknown job {job_id!r}")
            if row.status != JobStatus.RUNNING:
                raise PreconditionFailed(f"job {job_id} is already {row.status}")
            self.rounds.end_job(job_id, JobStatus.ABORTED, f"aborted by {by}: {reason or 'no reason given'}")
        self.events.record("job_aborted", by, job=job_id, reason=reason)

    # ------------------------------------------------------------------ participants
    def upload(
        self,
        silo: Identity,
        cert: x509.Certificate,
        offer: UploadOffer,
        chunks: Iterable[bytes],
        connected: Callable[[], bool],
    ) -> UploadReceipt:
        """Receive one upload into the job's open round (a vertical job has none, and says so)."""
        return self.rounds.receive(silo, cert, offer, chunks, connected, self.specs.get(offer.job_id))

    def _participant(self, job_id: str, silo: str) -> JobSpec:
        spec = self.specs.get(job_id)
        if silo not in spec.participants:
            raise Forbidden(f"{silo} is not a participant of job {job_id}")
        return spec

    def aggregate(self, job_id: str, round_index: int, silo: str) -> ReleasedAggregate:
        """A released aggregate for one of its participants."""
        self._participant(job_id, silo)
        released = self.rounds.released(job_id, round_index)
        if released is None:
            raise PreconditionFailed(f"round {round_index} of job {job_id} has no released aggregate")
        manifest, unmasking, chunks = self.rounds.archive.read(released[0])
        return ReleasedAggregate(manifest, chunks, released[1], unmasking)

    def decline(self, job_id: str, round_index: int, silo: str, reasons: list[str]) -> None:
        spec = self._participant(job_id, silo)
        self.store.add_decline(job_id, silo, round_index, reasons)
        self.events.record("job_declined", silo, job=job_id, round=round_index, reasons=reasons)
        if spec.partition == "vertical":
            row = self.store.job(job_id)
            if row is not None and row.status == JobStatus.RUNNING:
                self.vertical.declined(job_id, silo, reasons)
                return
        self.rounds.declined(job_id, round_index, silo, reasons, spec)

    def report_metrics(
        self, job_id: str, round_index: int, silo: str, metrics: dict[str, float], audit_head: str = ""
    ) -> None:
        spec = self._participant(job_id, silo)
        metrics = check_metrics(metrics)
        if not 0 <= round_index < spec.total_rounds:
            raise InvalidArgument(f"round: {round_index} is not a round of job {job_id} (0-{spec.total_rounds - 1})")
        if spec.partition == "vertical":  # an epoch the active party trained
            self.vertical.check_metrics(job_id, spec, silo)
        elif self.rounds.released(job_id, round_index) is None:  # a model the silo holds: a released aggregate
            raise PreconditionFailed(
                f"round {round_index} of job {job_id} has released no aggregate; metrics are reported after it"
            )
        with self.feed.lock:  # one report per silo and round: a repeat is accepted only if identical
            previous = self.store.metrics_of(job_id, round_index, silo)
            if previous:
                if previous == metrics:
                    return
                raise AlreadyExists(f"{silo} already reported metrics for round {round_index} of job {job_id}")
            self.store.put_metrics(job_id, round_index, silo, metrics)
        self.events.record(
            "metrics_reported", silo, job=job_id, round=round_index, metrics=metrics, audit_head=audit_head
        )
        self.feed.bump()

    def finish_vertical(self, job_id: str, party: str, ok: bool, reason: str, metrics: dict[str, float]) -> None:
        self.vertical.finish(job_id, party, ok, reason, metrics)

    # ------------------------------------------------------------------ queries
    def tasks_for(self, silo: str) -> list[TaskView]:
        tasks = []
        with self.feed.lock:
            for row in self.store.jobs():
                try:
                    spec = self.specs.get(row.job_id)
                except PreconditionFailed:  # an unreadable stored job (failed at restart) is offered to no one
                    continue
                if silo not in spec.participants:
                    continue
                open_round = self.rounds.open_round(row.job_id)
                completed = sum(1 for r in self.store.rounds(row.job_id) if r.status == RoundStatus.CLOSED)
                tasks.append(
                    TaskView(
                        job_id=row.job_id,
                        spec_json=row.spec_json,
                        job_status=row.status,
                        round=row.current_round,
                        round_status=RoundStatus.OPEN if open_round else RoundStatus.CLOSED,
                        completed_rounds=completed,
                        uploaded=bool(open_round and silo in open_round.contributors),
                        deadline_unix_ms=int(open_round.deadline * 1000) if open_round else 0,
                        reason=row.reason,
                        declined=silo in self.store.declines(row.job_id),
                        attempt=open_round.attempt if open_round else 1,
                    )
                )
        return tasks

    def status(self, job_id: str) -> JobStatusView:
        row = self.store.job(job_id)
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        spec = self.specs.get(job_id)
        metrics = self.store.metrics(job_id)
        rounds = self.vertical.epochs(spec, metrics) if spec.partition == "vertical" else []
        for r in self.store.rounds(job_id):
            with self.feed.lock:
                open_round = self.rounds.open_round(job_id)
                live = open_round if open_round and open_round.round == r.round else None
                names = sorted(live.contributors) if live else sorted(self.store.contributions(job_id, r.round))
                bytes_in = live.bytes_in if live else r.bytes_in
            end = r.closed_at or self.clock.now()
            rounds.append(
                RoundView(
                    round=r.round,
                    status=r.status,
                    attempt=r.attempt,
                    contributors=names,
                    bytes_in=bytes_in,
                    wall_s=end - r.opened_at,
                    reason=r.reason,
                    metrics=sorted(metrics.get(r.round, {}).items()),
                )
            )
        return JobStatusView(
            job_id=job_id,
            name=row.name,
            status=row.status,
            reason=row.reason,
            rounds_total=row.rounds_total,
            current_round=row.current_round,
            rounds=rounds,
            spec_json=row.spec_json,
            participants=list(spec.participants),
            submitted_by=row.submitted_by,
            declined=sorted(self.store.declines(job_id)),
            relay_bytes=self.store.relay_bytes(job_id),
            declines=[DeclineView(s, r, reasons) for s, r, reasons in self.store.all_declines(job_id)],
        )

    def list_jobs(self) -> list[JobSummary]:
        return [
            JobSummary(
                job_id=r.job_id,
                name=r.name,
                status=r.status,
                current_round=r.current_round,
                rounds_total=r.rounds_total,
                created=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created)),
            )
            for r in self.store.jobs()
        ]
