"""One horizontal job at one silo: catch up on aggregates, train, encrypt, upload, evaluate.

The global model never exists at the aggregator. Every silo starts from the same seeded initial
model and applies the same decrypted mean updates, so all silos hold the same global model. Round 0
is an encrypted statistics round when the job's scaling is federated: each silo contributes its
feature means and second moments weighted by its row count, and learns only the pooled ones.
With differential privacy, each silo trains with DP-SGD and accounts every step it takes.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from audit.events import EventSink
from crypto.compact import CompactBatch, CompactEncryptor
from crypto.contributors import own_tag
from crypto.engine import EncryptedBatch, UpdateEncryptor, encrypt_weighted_update, weighted_update_layout_key
from policies import dp
from policies.decision import Decision
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import JobSpec, secagg_table
from protocol.upload import SignedUpload
from protocol.vocabulary import JobStatus, RoundStatus
from silo_node.aggregate_checks import AggregateGate
from silo_node.client import AggregatorClient
from silo_node.data import LocalData, split
from silo_node.dp_training import PrivateTraining, privacy_details
from silo_node.jobfiles import (
    JobState,
    export_model,
    kept_delta_file,
    load_kept_delta,
    read_upload,
    read_upload_header,
    save_arrays,
    save_kept_delta,
    write_upload,
)
from silo_node.models import TorchAdapter, evaluate, make_adapter
from silo_node.node_files import write_atomic
from silo_node.privacy_ledger import PrivacyLedger
from silo_node.refusal import RoundRefused
from silo_node.relay import Relay
from silo_node.secagg_round import AgreementPending, Mask, SecAggCredentials, SecureAggregation

STATS_SCALE_BITS = 20  # feature moments can be large; 2^20 keeps them in range at ample precision


@dataclass
class SiloServices:
    """What the node lends each job: its connection, keys, signature, audit trail and privacy ledger."""

    name: str
    client: AggregatorClient
    encryptor: UpdateEncryptor | CompactEncryptor  # CompactEncryptor for he_profile = "compact"
    private_key: ec.EllipticCurvePrivateKey  # the certificate key: signs every upload
    events: EventSink
    audit_head: Callable[[], str]
    ledger: PrivacyLedger | None = None
    dataset_key: str = ""
    round_gate: Callable[[int], Decision] | None = None  # site policy, checked before every upload
    allowed_factories: tuple[str, ...] = ()  # site policy: model factories this node may import
    min_contributors: int = 2  # site policy: the fewest verified contributors of an aggregate this silo applies
    secagg: SecAggCredentials | None = None  # what secure-aggregation jobs sign and verify with
    after_agreement: Callable[[str, int], None] | None = None  # fault injection (demo --drop-silo): job, round


class HorizontalJob:
    def __init__(
        self,
        job_id: str,
        spec: JobSpec,
        directory: Path,
        data: LocalData,
        services: SiloServices,
        validation_fraction: float = 0.2,
        dp_plan: dp.DPPlan | None = None,
    ) -> None:
        self.job_id, self.spec, self.dir, self.data = job_id, spec, directory, data
        self.services = services
        self.name = services.name
        self.client, self.encryptor, self.events = services.client, services.encryptor, services.events
        self._audit_head = services.audit_head
        self.dir.mkdir(parents=True, exist_ok=True)
        self._upload_notes: dict[int, dict[str, Any]] = {}  # round -> quantization facts for update_sent
        self._delta_in_memory: tuple[int, OrderedDict[str, np.ndarray]] | None = None  # (round, delta) just trained
        self._sat_out: set[tuple[int, int]] = set()  # (round, attempt) whose secure aggregation this silo left
        self._pin_spec()
        seed = int.from_bytes(hashlib.sha256(f"{spec.seed}|{self.name}".encode()).digest()[:4], "big")
        self.train_rows, self.val_rows = split(data, validation_fraction, seed)
        self.state = self._load_state()
        if spec.dataset.scaling == "local" and self.state.mean is None:
            x = data.features[self.train_rows]  # this silo's own statistics: nothing leaves
            std = x.std(axis=0)
            std[std < 1e-8] = 1.0
            self.state.mean, self.state.std = x.mean(axis=0).tolist(), std.tolist()
        if dp_plan is None and spec.dp is not None:  # the node calibrates before it reserves; this is a fallback
            dp_plan = dp.plan(spec, len(self.train_rows))
        self.dp_plan = dp_plan if spec.dp is not None else None
        self.private: PrivateTraining | None = None
        if self.dp_plan is not None:
            self.private = PrivateTraining(
                job_id, self.name, self.dp_plan, services.ledger, services.dataset_key, self.events
            )
            self.private.check_history_matches_ledger(self.state)
        self.model = make_adapter(spec, data.features.shape[1], services.allowed_factories)
        weights_path = self.dir / "global.npz"
        if weights_path.exists():
            with np.load(weights_path) as stored:
                self.model.set_weights(OrderedDict((k, stored[k]) for k in stored.files))
        self.global_weights = self.model.get_weights()
        self.secure: SecureAggregation | None = None
        if spec.secure_aggregation:
            if services.secagg is None:
                raise RoundRefused(["this node has no credentials for secure aggregation"])
            relay = Relay(self.client, job_id, lambda: False, secagg_table(spec).setup_timeout_s)
            self.secure = SecureAggregation(job_id, spec, self.name, services.secagg, relay, self.events, self.dir)

    # ------------------------------------------------------------------ persistence
    def _pin_spec(self) -> None:
        """The spec first accepted is the job: the aggregator cannot re-offer the job id with other terms
        (more rounds, other participants or epsilon) after this node restarts."""
        path = self.dir / "accepted_spec.json"
        text = self.spec.model_dump_json()
        if path.exists():
            if path.read_text() != text:
                raise RoundRefused([f"the aggregator re-offers job {self.job_id} with other terms than accepted"])
            return
        write_atomic(path, text)

    def _load_state(self) -> JobState:
        path = self.dir / "state.json"
        return JobState(**json.loads(path.read_text())) if path.exists() else JobState()

    def _save(self, weights: bool = True) -> None:
        """The job state, and the weights unless ``weights=False``: they change only when an aggregate is
        applied, and rewriting 8 MB at every bookkeeping save (one right after each upload, on a masked
        round's critical path) cost about 10 ms each time."""
        if weights or not (self.dir / "global.npz").exists():
            save_arrays(self.dir / "global.npz", self.global_weights)
        write_atomic(self.dir / "state.json", json.dumps(self.state.__dict__))

    # ------------------------------------------------------------------ helpers
    def _round_kind(self, round_index: int) -> str:
        return "stats" if self.spec.stats_round and round_index == 0 else "train"

    def _x(self, rows: np.ndarray) -> np.ndarray:
        x = self.data.features[rows]
        if self.state.mean is not None and self.state.std is not None:
            x = (x - np.asarray(self.state.mean)) / np.asarray(self.state.std)
        return x

    def _y(self, rows: np.ndarray) -> np.ndarray:
        assert self.data.labels is not None
        return self.data.labels[rows]

    # ------------------------------------------------------------------ one step of work
    def check_task(self, task: pb.Task) -> None:
        """Refuse a task whose round numbers no honest aggregator running this job spec would send."""
        total = self.spec.total_rounds
        where = f"job {self.job_id} has rounds 0..{total - 1}"
        if not 0 <= task.completed_rounds <= total:
            raise RoundRefused([f"the aggregator claims {task.completed_rounds} completed rounds; {where}"])
        if task.completed_rounds < self.state.applied:
            raise RoundRefused(
                [
                    f"the aggregator claims {task.completed_rounds} completed rounds but this silo already applied "
                    f"{self.state.applied}: the job's history was rewound"
                ]
            )
        if not 0 <= task.round <= total:
            raise RoundRefused([f"the aggregator offers round {task.round}; {where}"])
        is_open = task.job_status == JobStatus.RUNNING and task.round_status == RoundStatus.OPEN
        if is_open and (task.round >= total or task.round != task.completed_rounds):
            raise RoundRefused(
                [
                    f"the aggregator opens round {task.round} after {task.completed_rounds} completed rounds; "
                    f"the next round of job {self.job_id} is {task.completed_rounds} (of {total})"
                ]
            )

    def step(self, task: pb.Task) -> None:
        self.check_task(task)
        attempt = max(int(task.attempt), 1)
        wanted = (  # the round open is the next one (check_task), this silo takes part in it
            task.job_status == JobStatus.RUNNING
            and task.round_status == RoundStatus.OPEN
            and not task.uploaded
            and int(task.round) not in self.state.declined_rounds
            and (int(task.round), attempt) not in self._sat_out
            and self._round_allowed(int(task.round))
        )
        while self.state.applied < task.completed_rounds:
            self._apply_aggregate(self.state.applied)
        if wanted and self.secure is not None and not self._upload_cache(int(task.round), attempt).exists():
            # Mask agreement runs beside training, after the download: relaying every silo's keys and shares
            # at the round's start made the aggregator serve the aggregate downloads about 0.1 s later.
            self.secure.begin(int(task.round), attempt)
        sent = wanted and task.round == self.state.applied and self._upload(int(task.round), attempt)
        if self.secure is not None and task.round_status == RoundStatus.OPEN and (task.uploaded or sent):
            # Right after its upload too, not only from the next poll: the last upload closes the round, and
            # its statement is waiting by the time the upload returns (a poll round trip sooner, per round).
            self.secure.serve(int(task.round), attempt)
        if (
            task.job_status == JobStatus.COMPLETED
            and self.state.applied >= self.spec.total_rounds
            and not self.state.finished
        ):
            self._finish()
        if task.job_status in (JobStatus.FAILED, JobStatus.ABORTED) and not self.state.finished:
            self.state.finished = True
            self._save(weights=False)
            self.events.record("job_ended", self.name, job=self.job_id, status=task.job_status, reason=task.reason)

    def _round_allowed(self, round_index: int) -> bool:
        """Site policy before every upload; a refusal is reported and this round is sat out."""
        gate = self.services.round_gate
        if gate is None:
            return True
        decision = gate(round_index)
        if decision.allowed:
            return True
        self.state.declined_rounds.append(round_index)
        self._save(weights=False)
        self.events.record("round_declined", self.name, job=self.job_id, round=round_index, reasons=decision.reasons)
        self.client.decline(self.job_id, round_index, decision.reasons)
        return False

    def _upload_cache(self, round_index: int, attempt: int) -> Path:
        """A masked upload is bound to its attempt's keys; an unmasked one is the round's, whatever the attempt."""
        if self.secure is not None:
            return self.dir / f"upload-{round_index:05d}-a{attempt:04d}.bin"
        return self.dir / f"upload-{round_index:05d}.bin"

    def _upload(self, round_index: int, attempt: int = 1) -> bool:
        """Send this round's update (the cached bytes on a re-send); False if it sat the session out or waits."""
        cache = self._upload_cache(round_index, attempt)
        if cache.exists():  # same bytes as before: the aggregator treats a re-send as idempotent
            header, chunks = read_upload(cache)
        else:
            mask = None
            if self.secure is not None:
                self._trained_delta(round_index)  # while the agreement begun in step() runs
                try:
                    mask = self.secure.mask_for(round_index, attempt)
                except AgreementPending:  # no roster or shares yet: upload on a later poll, the node goes on
                    return False
                if mask is None:  # refused (audited by agree()): the round goes on, or retries, without us
                    self._sat_out.add((round_index, attempt))
                    return False
                if self.services.after_agreement is not None:
                    self.services.after_agreement(self.job_id, round_index)
            upload, chunks = self._prepare_upload(round_index, mask)
            header = upload.to_proto()
            write_upload(cache, header, chunks)
        receipt = self.client.upload(header, chunks)
        if round_index not in self.state.acknowledged_rounds:
            self.state.acknowledged_rounds.append(round_index)
            self._save(weights=False)
        self.events.record(
            "update_sent",
            self.name,
            job=self.job_id,
            round=round_index,
            bytes=receipt.bytes,
            chunks=receipt.chunks,
            digest=receipt.digest,
            profile=self.spec.he_profile,
            encrypted=self.spec.he_profile != "none",
            idempotent_retry=receipt.already_received,
            aggregator_head=receipt.aggregator_audit_head,
            **privacy_details(self.encryptor, self._upload_notes.get(round_index), self.private, self.state),
        )
        return True

    def _encrypt(
        self, tensors: dict[str, Any], weight: float, tags: np.ndarray, round_index: int, mask: Mask | None = None
    ) -> EncryptedBatch:
        """Encrypt one training update under the job's profile (compact: quantized, clip counts kept for the audit)."""
        if isinstance(self.encryptor, CompactEncryptor):
            batch: CompactBatch = self.encryptor.encrypt_update(tensors, weight, tags=tags, mask=mask)
            self._upload_notes[round_index] = {"clipped_values": batch.clipped, "weight_capped": batch.weight_capped}
            return batch
        return encrypt_weighted_update(self.encryptor, tensors, weight, tags=tags)

    def _contributor_lane(self) -> int:
        if self.name not in self.spec.participants:
            raise RoundRefused([f"{self.name} is not among the job's participants"])
        return self.spec.participants.index(self.name)

    def _tags(self, round_index: int) -> np.ndarray:
        lanes = len(self.spec.participants)
        return own_tag(self.encryptor.tag_key, self.job_id, round_index, lanes, self._contributor_lane())

    def _check_may_train(self, round_index: int) -> None:
        """Train at most once per round and at most the spec's number of rounds, whatever the aggregator asks."""
        trained = self.state.trained_rounds
        if round_index in trained:
            raise RoundRefused([f"round {round_index} was already trained here; this silo does not train twice"])
        if len(trained) >= self.spec.rounds:
            raise RoundRefused([f"this silo already trained the job's {self.spec.rounds} rounds"])
        self.state.trained_rounds.append(round_index)
        self._save(weights=False)

    def _prepare_upload(self, round_index: int, mask: Mask | None = None) -> tuple[SignedUpload, list[bytes]]:
        weight = float(len(self.train_rows))
        tags = self._tags(round_index)
        if self._round_kind(round_index) == "stats":
            if isinstance(self.encryptor, CompactEncryptor):  # the job spec refuses this; never quantize moments
                raise RoundRefused(["a compact job has no statistics round (dataset.scaling must be local or none)"])
            batch = encrypt_weighted_update(
                self.encryptor, self._stats_tensors(), weight, scale_bits=self._stats_scale_bits(), tags=tags
            )
        else:
            batch = self._encrypt(self._trained_delta(round_index), weight, tags, round_index, mask)
        upload = SignedUpload.sign(
            self.services.private_key, self.job_id, round_index, batch.manifest, self._audit_head()
        )
        return upload, batch.chunks

    def _trained_delta(self, round_index: int) -> OrderedDict[str, np.ndarray]:
        """Train once for this round. A secure-aggregation retry re-masks the update trained for the round's
        first attempt (kept on this silo's disk): training again would spend the privacy budget twice."""
        if self._delta_in_memory is not None and self._delta_in_memory[0] == round_index:
            return self._delta_in_memory[1]  # _upload trains before the mask is ready, then encrypts
        kept = self.dir / f"delta-{round_index:05d}.bin"
        if self.secure is not None and (stored := kept_delta_file(kept)) is not None:
            return load_kept_delta(stored, self.global_weights)
        self._check_may_train(round_index)
        self.model.set_weights(self.global_weights)
        seed = int.from_bytes(
            hashlib.sha256(f"{self.spec.seed}|{self.name}|{round_index}".encode()).digest()[:4], "big"
        )
        if self.private is not None:
            assert isinstance(self.model, TorchAdapter)
            x, y = self._x(self.train_rows), self._y(self.train_rows)
            self.private.train(self.model, x, y, seed, round_index, self.state, lambda: self._save(weights=False))
        else:
            self.model.train(self._x(self.train_rows), self._y(self.train_rows), seed)
        delta = self._delta(self.model.get_weights())
        if self.spec.update_clip_norm:
            delta = dp.clip_update(delta, self.spec.update_clip_norm)
        if self.secure is not None:
            save_kept_delta(kept, delta)
            self._delta_in_memory = (round_index, delta)
        return delta

    def _stats_tensors(self) -> OrderedDict[str, np.ndarray]:
        x = self.data.features[self.train_rows]
        return OrderedDict([("mean", x.mean(axis=0)), ("sqmean", (x**2).mean(axis=0))])

    def _stats_scale_bits(self) -> int | None:
        return STATS_SCALE_BITS if self.spec.he_profile != "none" else None

    def _delta(self, new: OrderedDict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((k, new[k] - self.global_weights[k]) for k in new)

    def _expected_layout_key(self, round_index: int) -> tuple[str, str, str, int, int, int]:
        """The layout this silo applies a round's aggregate under: its own upload's, never the aggregator's word.

        Without an upload (declined round, no cache) it is the layout its upload would have had: the same
        packing as ``_prepare_upload`` over the statistics or over a zero update of the global weights.
        """
        for cache in sorted(self.dir.glob(f"upload-{round_index:05d}*.bin")):
            return SignedUpload.from_proto(read_upload_header(cache)).manifest.layout_key()
        weight, tags = float(max(len(self.train_rows), 1)), self._tags(round_index)
        if isinstance(self.encryptor, CompactEncryptor):  # lanes: the layout of a (zero) update it would send
            zero = self._delta(self.global_weights)
            unmasked = (lambda v: v) if self.secure is not None else None  # the layout does not depend on masks
            return self.encryptor.encrypt_update(zero, weight, tags=tags, mask=unmasked).manifest.layout_key()
        if self._round_kind(round_index) == "stats":
            return weighted_update_layout_key(
                self.encryptor, self._stats_tensors(), weight, self._stats_scale_bits(), tags
            )
        return weighted_update_layout_key(self.encryptor, self._delta(self.global_weights), weight, tags=tags)

    def _apply_aggregate(self, round_index: int) -> None:
        agg_header, manifest, chunks = self.client.download(self.job_id, round_index)
        minimum = max(self.services.min_contributors, self.spec.min_silos, 2)
        lanes, own_lane = len(self.spec.participants), self._contributor_lane()
        gate = AggregateGate(self.job_id, self.name, self.encryptor, self.events, lanes, own_lane, minimum)
        secure = self.secure  # a masked sum: removed after decryption with the secrets its unmasking revealed
        correction = None if secure is None else partial(secure.correction_for, round_index, agg_header.unmasking)
        mean, verified = gate.open(
            round_index,
            manifest,
            chunks,
            self._expected_layout_key(round_index),
            int(agg_header.contributors),
            own_required=round_index in self.state.acknowledged_rounds,
            correction=correction,
        )
        self.events.record(
            "aggregate_decrypted",
            self.name,
            job=self.job_id,
            round=round_index,
            contributors=agg_header.contributors,
            verified_contributors=verified,
            aggregate_digest=manifest.digest().hex(),  # silos' audit logs can be compared for equivocation
            bytes=sum(len(c) for c in chunks),
        )
        if self._round_kind(round_index) == "stats":
            mu = np.asarray(mean.tensors["mean"], dtype=np.float64)
            var = np.asarray(mean.tensors["sqmean"], dtype=np.float64) - mu**2
            std = np.sqrt(np.clip(var, 0.0, None))
            std[std < 1e-8] = 1.0
            self.state.mean, self.state.std = mu.tolist(), std.tolist()
        else:
            self.global_weights = OrderedDict(
                (k, self.global_weights[k] + np.asarray(mean.tensors[k], dtype=np.float64)) for k in self.global_weights
            )
            self.model.set_weights(self.global_weights)
        self.state.applied = round_index + 1
        self._save()
        if self._round_kind(round_index) == "train":
            metrics = evaluate(self.model, self._x(self.val_rows), self._y(self.val_rows), self.spec.model.num_classes)
            self.state.history.append({"round": round_index, **metrics})
            self._save(weights=False)
            self.client.report_metrics(self.job_id, round_index, metrics, self._audit_head())

    def _finish(self) -> None:
        export = export_model(self.dir, self.global_weights, self.state, self.spec)
        self.state.finished = True
        self._save()
        self.events.record(
            "model_exported",
            self.name,
            job=self.job_id,
            path=str(export),
            sha256=hashlib.sha256(export.read_bytes()).hexdigest(),
        )
        print(f"job {self.job_id} completed: trained model written to {export}", flush=True)
