"""The silo node process: poll the aggregator, do each job's next step, never stop on one job's error."""

from __future__ import annotations

import signal
import ssl
import threading
import time
from pathlib import Path
from types import FrameType

import grpc

from audit.events import EventSink, LogSink
from audit.log import AuditLog, AuditSink
from crypto import pki
from crypto.compact import CompactEncryptor
from crypto.engine import UpdateEncryptor
from crypto.errors import CryptoError
from crypto.signing import sign_digest
from policies import dp
from policies.decision import Decision
from policies.evaluate import evaluate_site, evaluate_without_site_policy
from policies.schema import load_site_policy
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import JobSpec, compact_params, job_spec_from_json
from protocol.names import MAX_JOB_ID_CHARS as MAX_ID
from protocol.names import is_safe_name, safe_job_id
from protocol.tomlconfig import ConfigError
from protocol.version import __version__
from protocol.vocabulary import JobStatus
from silo_node.client import AggregatorClient, Backoff
from silo_node.config import NodeConfig, load_node_config
from silo_node.data import DataError, LocalData, load_columns, split
from silo_node.dp_training import calibrate, reserve
from silo_node.faults import stop_after_agreement_hook
from silo_node.horizontal import HorizontalJob, RoundRefused, SiloServices
from silo_node.keys import FetchedKey, NodeKeys, key_trust
from silo_node.node_files import FinishedJobs, write_atomic
from silo_node.peer import aggregator_certificate
from silo_node.privacy_ledger import PrivacyLedger
from silo_node.refusal import JobRefused
from silo_node.secagg_round import SecAggCredentials
from silo_node.vertical import ActiveParty, PartyCredentials, PassiveParty, Relay, VerticalRunner

MAX_STEP_FAILURES = 3  # then the job is declined with the error as its reason


class SiloNode:
    def __init__(self, config: NodeConfig, events: EventSink | None = None) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.private_key = pki.load_private_key(config.tls.key)
        self.certificate = pki.load_certificate(config.tls.cert)
        self.events: EventSink = events or self._audit_sink()
        cert_name = pki.common_name(self.certificate)
        if cert_name != config.name:
            raise ValueError(f"node.toml name {config.name!r} differs from the certificate's common name {cert_name!r}")
        self.client = AggregatorClient(config.aggregator, config.tls.files(), config.server_name)
        self.trust = key_trust(config)
        self.keys = NodeKeys(
            config.keys,
            config.name,
            config.consortium,
            self.private_key,
            self.certificate,
            config.state_dir / "keys",
            self._fetch_wrapped_key,
            trust=self.trust,
        )
        self.keys.on_unwrap = lambda fingerprint, scope: self.events.record(
            "key_unwrapped", config.name, fingerprint=fingerprint, scope=scope
        )
        self.keys.on_refused = lambda what, reason: self.events.record(
            "key_refused", config.name, key=what, reason=reason[:500]
        )
        self.site_policy = load_site_policy(config.site_policy) if config.site_policy else None
        self.ledger = PrivacyLedger(config.state_dir / "privacy.sqlite")
        self.jobs: dict[str, HorizontalJob | VerticalRunner] = {}
        self.failures: dict[str, int] = {}
        self._aggregator_fp: str | None = None
        self.ignored: set[str] = set()
        self.finished = FinishedJobs(config.state_dir / "finished-jobs.txt")
        self.stop_event = threading.Event()
        self.version = 0

    def _audit_sink(self) -> EventSink:
        logger = f"cipherfed.node.{self.config.name}"
        if self.config.audit_log is None:
            return LogSink(logger)
        return AuditSink(AuditLog(self.config.audit_log, self.private_key, self.certificate, __version__), logger)

    def _fetch_wrapped_key(self, fingerprint: str) -> FetchedKey:
        reply = self.client.stub.GetKeyMaterial(pb.KeyMaterialRequest(scope=fingerprint), timeout=30)
        if reply.fingerprint != fingerprint:
            raise CryptoError(f"the aggregator returned key {reply.fingerprint}, not {fingerprint}")
        return FetchedKey(
            reply.scope, bytes(reply.wrapped_for_me), bytes(reply.endorsement), bytes(reply.custodian_cert)
        )

    def audit_head(self) -> str:
        return self.events.head

    def sign(self, digest: bytes) -> bytes:
        return sign_digest(self.private_key, digest)

    # ------------------------------------------------------------------ jobs
    def _job(self, task: pb.Task) -> HorizontalJob | VerticalRunner:
        job = self.jobs.get(task.job_id)
        if job is not None:
            return job
        spec = self._offered_spec(task)
        self.events.record(
            "job_offered",
            self.config.name,
            job=task.job_id,
            name=spec.name,
            he_profile=spec.he_profile,
            rounds=spec.total_rounds,
        )
        job = self._accept(task.job_id, spec)
        self.jobs[task.job_id] = job
        return job

    def _offered_spec(self, task: pb.Task) -> JobSpec:
        """The offered job's id and spec, validated before either is used (the aggregator may be hostile).

        The job id becomes a directory under state_dir, so it must be a safe identifier; the spec is
        validated like a submitted one. Either failure is a refusal with the reason, never an
        exception out of the run loop.
        """
        try:
            safe_job_id(task.job_id)
        except ValueError as exc:
            raise JobRefused([f"offered job refused: {exc}"]) from None
        try:
            spec = job_spec_from_json(task.spec_json, f"job spec of {task.job_id}")
        except ConfigError as exc:
            problems = "; ".join(f"{field}: {reason}" for field, reason in exc.problems)
            raise JobRefused([f"offered job spec is not valid: {problems}"[:2000]]) from None
        # A job that does not name this node is not this node's to run: refused before a row is read
        # or any privacy budget reserved (an aggregator could otherwise drain the budget with such offers).
        me = self.config.name
        if me not in spec.participants or (spec.vertical is not None and me not in spec.vertical.features):
            listed = ", ".join(spec.participants[:20])
            raise JobRefused(
                [
                    f"participants: job {task.job_id} lists [{listed}], not this node ({me}); "
                    "a silo only runs jobs that name it: submit the job with this silo among its participants"
                ]
            )
        return spec

    def _load_for_job(
        self, job_id: str, features: list[str], label: str | None, id_column: str | None, role: str
    ) -> LocalData:
        """Read exactly the columns a job uses; record names and counts (never values) in the audit log."""
        try:
            data = load_columns(self.config.data.path, features, label, id_column, self.config.data.format)
        except DataError as exc:
            raise JobRefused([str(exc)]) from None
        columns = [*data.feature_names, *([label] if label else []), *([id_column] if id_column else [])]
        rows, fp = data.rows, data.source_fingerprint
        self.events.record(
            "dataset_used", self.config.name, job=job_id, dataset=fp, rows=rows, columns=columns, role=role
        )
        return data

    def _dataset_key(self) -> str:
        return str(self.config.data.path.resolve())

    def _aggregator_fingerprint(self, refresh: bool) -> str:
        """The aggregator's certificate fingerprint, read from a TLS handshake when a job is offered and
        reused for that job's per-round checks (one extra handshake per job, not per round)."""
        if not refresh and self._aggregator_fp is not None:
            return self._aggregator_fp
        self._aggregator_fp = self._read_aggregator_fingerprint()
        return self._aggregator_fp

    def _read_aggregator_fingerprint(self) -> str:
        try:
            cert = aggregator_certificate(self.config.aggregator, self.config.tls.files(), self.config.server_name)
        except (OSError, ssl.SSLError) as exc:
            self.events.record("aggregator_certificate_unavailable", self.config.name, error=str(exc)[:200])
            return ""
        return pki.certificate_fingerprint(cert)

    def evaluate_policy(self, job_id: str, spec: JobSpec, stage: str, round_index: int | None = None) -> Decision:
        """The site policy's decision on this job (or round); recorded whatever the outcome."""
        assert self.site_policy is not None
        spent = self.ledger.reserved(self._dataset_key(), excluding_job=job_id)
        decision = evaluate_site(
            self.site_policy,
            spec,
            aggregator_fingerprint=self._aggregator_fingerprint(refresh=round_index is None),
            consortium=self.config.consortium,
            budget_spent=spent,
            stage=stage,
        )
        self.events.record("policy_decision", self.config.name, job=job_id, round=round_index, **decision.as_details())
        return decision

    def _accept(self, job_id: str, spec: JobSpec) -> HorizontalJob | VerticalRunner:
        # The site policy decides from the job spec alone, before a single row is read.
        if self.site_policy is not None:
            decision = self.evaluate_policy(job_id, spec, "job offered")
        else:  # no privacy officer's yes: no job-supplied code, no plaintext updates
            decision = evaluate_without_site_policy(spec)
            self.events.record("policy_decision", self.config.name, job=job_id, **decision.as_details())
        if not decision.allowed:
            raise JobRefused(decision.reasons)
        if spec.partition == "vertical":
            return self._accept_vertical(job_id, spec)
        offered = self.config.data.features
        if offered is not None:
            extra = [c for c in spec.dataset.features if c not in offered]
            if extra or (self.config.data.label and spec.dataset.label != self.config.data.label):
                raise JobRefused([f"columns not offered by this node: {', '.join(extra or [spec.dataset.label])}"])
        try:
            compact = compact_params(spec) if spec.he_profile == "compact" else None
            encryptor = self.keys.encryptor(spec.he_profile, spec.key_fingerprint, compact)
        except (CryptoError, grpc.RpcError) as exc:
            detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
            raise JobRefused([f"HE key: {detail}"]) from None
        data = self._load_for_job(job_id, spec.dataset.features, spec.dataset.label, None, "horizontal")
        plan = calibrate(spec, len(split(data, self.config.data.validation_fraction, 0)[0]))  # seed-independent
        newly_reserved = spec.dp is not None and self.ledger.reservation(self._dataset_key(), job_id) is None
        try:
            return self._accept_horizontal(job_id, spec, data, encryptor, plan)
        except BaseException:
            if newly_reserved and self.ledger.release(self._dataset_key(), job_id):
                self.events.record("dp_budget_released", self.config.name, job=job_id, reason="job not accepted")
            raise

    def _accept_horizontal(
        self,
        job_id: str,
        spec: JobSpec,
        data: LocalData,
        encryptor: UpdateEncryptor | CompactEncryptor,
        plan: dp.DPPlan | None,
    ) -> HorizontalJob:
        """Reserve the job's epsilon and build the job; the caller releases the reservation if this fails."""
        if spec.dp is not None:
            total = reserve(self.ledger, self._dataset_key(), job_id, spec)
            budget = self.site_policy.dp.total_budget if self.site_policy and self.site_policy.dp else None
            self.events.record(
                "dp_budget",
                self.config.name,
                job=job_id,
                dataset=data.source_fingerprint,
                reserved_epsilon=spec.dp.epsilon,
                total_epsilon=total,
                budget=budget,
            )
        services = SiloServices(
            self.config.name,
            self.client,
            encryptor,
            self.private_key,
            self.events,
            self.audit_head,
            self.ledger,
            self._dataset_key(),
            (lambda r: self.evaluate_policy(job_id, spec, f"round {r} upload", r)) if self.site_policy else None,
            allowed_factories=tuple(self.site_policy.allowed_factories) if self.site_policy else (),
            min_contributors=self.site_policy.min_contributors if self.site_policy else 2,
            secagg=SecAggCredentials(self.config.consortium, self.private_key, self.certificate, self.trust),
            after_agreement=stop_after_agreement_hook(self.config.name, self.events),
        )
        job = HorizontalJob(
            job_id,
            spec,
            self.config.state_dir / "jobs" / job_id,
            data,
            services,
            self.config.data.validation_fraction,
            dp_plan=plan,
        )
        self.events.record(
            "job_accepted",
            self.config.name,
            job=job_id,
            he_profile=spec.he_profile,
            key_fingerprint=encryptor.fingerprint,
            dp_epsilon=spec.dp.epsilon if spec.dp else None,
        )
        return job

    def _accept_vertical(self, job_id: str, spec: JobSpec) -> VerticalRunner:
        assert spec.vertical is not None
        me = self.config.name
        active = spec.vertical.active == me
        data = self._load_for_job(
            job_id,
            spec.vertical.features[me],
            spec.dataset.label if active else None,
            spec.dataset.id,
            role="active" if active else "passive",
        )
        self.events.record("job_accepted", me, job=job_id, he_profile=spec.he_profile, partition="vertical")
        directory = self.config.state_dir / "jobs" / job_id
        directory.mkdir(parents=True, exist_ok=True)
        stopped = threading.Event()
        relay = Relay(self.client, job_id, stopped.is_set)
        party_type = ActiveParty if active else PassiveParty
        credentials = PartyCredentials(self.config.consortium, self.private_key, self.certificate, self.trust)
        party = party_type(job_id, spec, me, data, relay, self.client, self.events, directory, credentials)

        def failed(reason: str) -> None:
            self.events.record("step_failed", me, job=job_id, error=reason)
            if not active:  # the active party reports its own failure with FinishJob
                self.client.decline(job_id, -1, [f"{me}: {reason}"])

        runner = VerticalRunner(party, failed)
        runner.stopped = stopped
        return runner

    def handle(self, task: pb.Task) -> None:
        if task.job_id in self.ignored or task.declined or task.job_id in self.finished:
            return  # finished before a restart: re-accepting it would read the data (and audit its use) again
        try:
            job = self._job(task)
        except (JobRefused, RoundRefused) as exc:
            self._decline_offer(task, exc.reasons)
            return
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise  # the aggregator is unreachable: the run loop backs off and the offer comes again
            self._decline_offer(
                task, [f"{self.config.name} could not accept the job: {exc.code().name}: {exc.details()}"]
            )
            return
        except Exception as exc:  # one job's offer must never stop the node, whatever it holds
            self._decline_offer(
                task, [f"{self.config.name} could not accept the job: {type(exc).__name__}: {exc}"[:2000]]
            )
            return
        try:
            job.step(task)
        except RoundRefused as exc:  # the aggregator asked for what the spec or this silo's limits forbid
            self.ignored.add(task.job_id)
            self.events.record("job_declined", self.config.name, job=task.job_id, reasons=exc.reasons)
            if task.job_status == JobStatus.RUNNING:
                self.client.decline(task.job_id, -1, exc.reasons)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            # a refusal for this job (round closed meanwhile, ...): log it, poll again
            self.events.record(
                "step_refused", self.config.name, job=task.job_id, code=exc.code().name, reason=exc.details()
            )
        except Exception as exc:  # one job's failure must never stop the node
            failures = self.failures.get(task.job_id, 0) + 1
            self.failures[task.job_id] = failures
            self.events.record(
                "step_failed",
                self.config.name,
                job=task.job_id,
                error=f"{type(exc).__name__}: {exc}",
                consecutive_failures=failures,
            )
            if failures >= MAX_STEP_FAILURES:
                reason = f"{self.config.name} could not run the job: {type(exc).__name__}: {exc}"
                self.ignored.add(task.job_id)
                self.events.record("job_declined", self.config.name, job=task.job_id, reasons=[reason])
                if task.job_status == JobStatus.RUNNING:
                    self.client.decline(task.job_id, -1, [reason])
        else:
            self.failures.pop(task.job_id, None)
            if _is_finished(job):
                self.finished.add(task.job_id)
                self.jobs.pop(task.job_id, None)

    def _decline_offer(self, task: pb.Task, reasons: list[str]) -> None:
        """Leave an offered job for good: audited, told to the aggregator, never offered to this loop again."""
        self.ignored.add(task.job_id)
        job_id = task.job_id if is_safe_name(task.job_id, MAX_ID) else repr(task.job_id[:MAX_ID])
        self.events.record("job_declined", self.config.name, job=job_id, reasons=reasons)
        if task.job_status == JobStatus.RUNNING:
            self.client.decline(task.job_id, -1, reasons)

    # ------------------------------------------------------------------ loop
    def _heartbeat(self, server_time_ms: int) -> None:
        """Proof of life for container/systemd health checks: the node has no port to probe."""
        write_atomic(self.config.state_dir / "heartbeat", f"{time.time():.3f} {server_time_ms}\n")

    def _contact_lost(self, code: str) -> None:
        """A failed poll is recorded next to the heartbeat, so `node health` never vouches for a dead link."""
        write_atomic(self.config.state_dir / "heartbeat.failed", f"{time.time():.3f} {code}\n")

    def run(self) -> None:
        own = pki.certificate_fingerprint(self.certificate)
        self.events.record(
            "node_started",
            self.config.name,
            version=__version__,
            cert_fingerprint=own,
            aggregator=self.config.aggregator,
        )
        backoff = Backoff()
        wait_ms = int(self.config.poll_wait_s * 1000)
        while not self.stop_event.is_set():
            try:
                reply = self.client.poll(wait_ms, self.version)
                self.version = reply.version
                backoff.reset()
                self._heartbeat(reply.server_time_unix_ms)
                for task in reply.tasks:
                    if self.stop_event.is_set():
                        break
                    self.handle(task)
            except grpc.RpcError as exc:
                delay = backoff.next_delay()
                self._contact_lost(exc.code().name)
                self.events.record(
                    "aggregator_unreachable",
                    self.config.name,
                    code=exc.code().name,
                    detail=(exc.details() or "")[:200],
                    retry_in_s=round(delay, 2),
                )
                self.stop_event.wait(delay)
        for job in self.jobs.values():
            if isinstance(job, VerticalRunner):
                job.stopped.set()
            elif job.secure is not None:  # a key agreement waiting for a roster or shares ends now
                job.secure.close()
        self.events.record("node_stopped", self.config.name)
        self.client.close()


def _is_finished(job: HorizontalJob | VerticalRunner) -> bool:
    if isinstance(job, HorizontalJob):
        return job.state.finished
    return job.status != JobStatus.RUNNING


def run(config_path: Path) -> int:
    """``cipherfed node start``: run until SIGTERM or SIGINT."""
    node = SiloNode(load_node_config(config_path))

    def stop(signum: int, frame: FrameType | None) -> None:
        node.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"node {node.config.name} dialing {node.config.aggregator} (no listening socket); Ctrl-C to stop", flush=True)
    node.run()
    return 0
