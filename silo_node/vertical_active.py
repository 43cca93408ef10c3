"""The active party of a vertical job: the label holder that generates the job's keys, aligns the
entities, trains its own weights from the passives' encrypted partial scores, and answers their probes."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import numpy as np
from cryptography.hazmat.primitives import serialization

from crypto.endorsement import (
    endorse,
)
from crypto.errors import CryptoError
from crypto.keys import generate_key_set
from crypto.pki import write_secret_file
from crypto.psi import PsiError, PsiParty, match
from crypto.vertical_codec import VectorCodec, segment_sums, tile
from protocol import cipherfed_pb2 as pb
from protocol.vocabulary import AGGREGATOR_RECIPIENT, RelayKind
from silo_node.relay import PartyKind, VerticalError, read_points, record_data_sent
from silo_node.vertical_guard import (
    PROBES,
    ExchangeRefused,
    check_revealed_probe,
    probe_context,
)
from silo_node.vertical_party import Party, batches, sigmoid, standardize, train_positions


class ActiveParty(Party):
    """The label holder: generates the job's keys, aligns, trains, and reports the outcome."""

    def run(self) -> dict[str, float]:
        try:
            return self._run()
        finally:
            record_data_sent(self.events, self.name, self.job_id, self.relay, self.spec.he_profile != "none")

    def _run(self) -> dict[str, float]:
        try:
            codec = self._keys()
            rows_by_party = self._align()
            metrics = self._train(codec, rows_by_party)
        except (VerticalError, PsiError, CryptoError) as exc:
            reason = str(exc)  # the passives learn it from the job's status and stop waiting
            self.client.stub.FinishJob(pb.FinishJobRequest(job_id=self.job_id, ok=False, reason=reason), timeout=30)
            self.events.record("job_failed", self.name, job=self.job_id, reason=reason)
            raise VerticalError(reason) from None
        self.client.stub.FinishJob(
            pb.FinishJobRequest(
                job_id=self.job_id, ok=True, metrics=metrics, reason=f"trained {self.spec.rounds} epochs"
            ),
            timeout=30,
        )
        return metrics

    def _keys(self) -> VectorCodec:
        if self.spec.he_profile == "none":
            return VectorCodec(None)
        if self.credentials is None:
            raise VerticalError("this node has no certificate key to endorse the job's public key with")
        keys = generate_key_set("vertical")
        secret = self.directory / "vertical.key"
        write_secret_file(secret, keys.export_secret())
        public_export = keys.export_public()
        endorsement = endorse(  # the passives use this public key only if their active party signed it
            self.credentials.private_key,
            self.credentials.certificate,
            consortium=self.credentials.consortium,
            scope=self.job_id,
            fingerprint=keys.fingerprint,
            profile=keys.profile.name,
            public_export=public_export,
            wrapped={},
        )
        self.client.stub.PutKeyMaterial(
            pb.KeyMaterial(
                scope=self.job_id,
                fingerprint=keys.fingerprint,
                public_context=public_export,
                endorsement=endorsement.encode(),
                custodian_cert=self.credentials.certificate.public_bytes(serialization.Encoding.PEM),
            ),
            timeout=60,
        )
        self.events.record(
            "key_generated",
            self.name,
            job=self.job_id,
            fingerprint=keys.fingerprint,
            profile="vertical",
            scope=self.job_id,
            shared_with="public context only",
        )
        return VectorCodec(keys.public.tenseal_context)

    def _align(self) -> dict[str, np.ndarray]:
        assert self.data.ids is not None
        psi = PsiParty(self.data.ids, self.job_id)
        mine = psi.blinded()
        for passive in self.vertical.passive:
            self.relay.send_blob(passive, PartyKind.PSI_A, 0, b"".join(mine))
        common: set[int] | None = None
        matches: dict[str, dict[int, int]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for passive in self.vertical.passive:
            theirs = read_points(self.relay.receive_blob(passive, PartyKind.PSI_B, 0))
            ours_by_them = read_points(self.relay.receive_blob(passive, PartyKind.PSI_AB, 0))
            meta[passive] = self.relay.receive_json(passive, PartyKind.META)
            found = match(ours_by_them, psi.blind(theirs))  # our sent position -> their sent position
            matches[passive] = found
            common = set(found) if common is None else common & set(found)
        common_rows = sorted(psi.order[pos] for pos in (common or set()))  # alignment order: our row order
        position_of_row = {psi.order[pos]: pos for pos in (common or set())}
        n = len(common_rows)
        self.events.record(
            "entities_aligned",
            self.name,
            job=self.job_id,
            intersection=n,
            per_party={p: len(m) for p, m in matches.items()},
            local_rows=self.data.rows,
        )
        if n == 0:
            raise VerticalError("entity alignment found no common entities")
        if n < self.vertical.min_entities:
            raise VerticalError(f"only {n} common entities; the job needs at least {self.vertical.min_entities}")
        for passive, found in matches.items():
            positions = [found[position_of_row[row]] for row in common_rows]
            self.relay.send_blob(passive, PartyKind.ALIGN, 0, json.dumps({"positions": positions}).encode())
        self.passive_columns = {p: self._declared_columns(p, m) for p, m in meta.items()}
        return {self.name: np.asarray(common_rows)}

    def _declared_columns(self, passive: str, meta: dict[str, object]) -> int:
        """A passive's column count is the one the job spec gives it: more columns would mean more
        per-column gradient sums of the residual (the labels' signal) than the coordinator approved."""
        expected = len(self.vertical.features[passive])
        declared = meta.get("features")
        if not isinstance(declared, int) or isinstance(declared, bool) or declared != expected:
            self._refuse(
                passive, 0, "feature count", f"declared {declared!r} feature columns; the job spec gives it {expected}"
            )
        return expected

    def _train(self, codec: VectorCodec, rows_by_party: dict[str, np.ndarray]) -> dict[str, float]:
        rows = rows_by_party[self.name]
        assert self.data.labels is not None
        x_all, y = self.data.features[rows], self.data.labels[rows].astype(np.float64)
        mean, std = standardize(x_all)
        x = (x_all - mean) / std
        n, spec = len(rows), self.spec
        train, test = train_positions(n, spec.seed)
        w, b = np.zeros(x.shape[1]), 0.0
        step = 0
        for epoch in range(spec.rounds):
            losses, correct = [], 0
            for idx in batches(train, spec.batch_size, spec.seed, epoch):
                step += 1
                u = codec.decrypt(self.relay.receive(AGGREGATOR_RECIPIENT, RelayKind.SUMMED_SCORES, step)[1])[
                    : len(idx)
                ]
                p = sigmoid(x[idx] @ w + b + u)
                d = p - y[idx]
                w -= spec.lr * (x[idx].T @ d / len(idx) + spec.model.l2 * w)
                b -= spec.lr * float(d.mean())
                chunks = {}
                for passive, columns in self.passive_columns.items():
                    chunks[passive] = len(sent := codec.encrypt(tile(d, columns)))
                    self.relay.send(passive, RelayKind.RESIDUALS, step, sent)
                answered = {
                    passive: self._answer_probe(codec, passive, step, chunks[passive], columns * len(idx))
                    for passive, columns in self.passive_columns.items()
                }
                for passive, columns in self.passive_columns.items():
                    masked = codec.decrypt(self.relay.receive(passive, RelayKind.MASKED_PRODUCTS, step)[1])
                    sums = segment_sums(masked, columns, len(idx))
                    self.relay.send(passive, RelayKind.MASKED_SUMS, step, [sums.astype("<f8").tobytes()])
                for passive, columns in self.passive_columns.items():
                    self._check_probe_seed(codec, passive, step, answered[passive], tile(d, columns), columns)
                losses.append(float(-np.mean(y[idx] * np.log(p + 1e-12) + (1 - y[idx]) * np.log(1 - p + 1e-12))))
                correct += int(((p > 0.5) == (y[idx] > 0.5)).sum())
            metrics = {"loss": float(np.mean(losses)), "accuracy": correct / max(len(train), 1)}
            self.client.report_metrics(self.job_id, epoch, metrics, self.events.head)  # anchors our audit log
        self.weights, self.bias, self.mean, self.std = w, b, mean, std
        self.aligned_ids = [self.data.ids[r] for r in rows] if self.data.ids else []
        test_metrics = self._joint_test(codec, x, y, test, step)
        self._save(codec)
        return test_metrics

    def _answer_probe(
        self, codec: VectorCodec, passive: str, step: int, chunks: int, slots: int
    ) -> tuple[np.ndarray, bytes]:
        """Decrypt a passive's decoy products and return one masked total per decoy, real parts then
        imaginary parts (the checks are the passive's; an honest residual passes them).

        Exactly ``PROBES`` decoys and a 32-byte commitment, or the job ends: a passive that could ask for
        more totals, or for decoys of its choosing (opened later by the seed), could solve for the labels.
        Returns the totals answered and the commitment, for :meth:`_check_probe_seed` after the batch.
        """
        parts = self.relay.receive(passive, RelayKind.DECOY_PRODUCTS, step)[1]
        if len(parts) != PROBES * chunks:
            self._refuse(
                passive,
                step,
                "probe count",
                f"{passive} sent {len(parts)} decoy chunks; exactly {PROBES} decoys of {chunks} chunks each "
                f"({PROBES * chunks}) are answered: more totals would let a passive party solve for the labels",
            )
        commitment = b"".join(self.relay.receive(passive, RelayKind.PROBE_COMMITMENT, step)[1])
        if len(commitment) != 32:
            self._refuse(
                passive, step, "probe commitment", f"{passive} sent a {len(commitment)}-byte commitment, 32 expected"
            )
        totals = np.asarray(
            [codec.decrypt_products(parts[k * chunks : (k + 1) * chunks])[:slots].sum() for k in range(PROBES)]
        )
        # kind "m", seq step: the passive takes this reply before it sends "g", so the gradient's sums
        # under the same (kind, seq) never meet it in the relay
        self.relay.send(passive, RelayKind.MASKED_SUMS, step, [np.r_[totals.real, totals.imag].astype("<f8").tobytes()])
        return totals, commitment

    def _check_probe_seed(
        self,
        codec: VectorCodec,
        passive: str,
        step: int,
        answered: tuple[np.ndarray, bytes],
        residual: np.ndarray,
        columns: int,
    ) -> None:
        """After the batch, the passive reveals its probe's seed: it must open the commitment and derive
        the very decoys and masks whose totals we answered, or the job ends (a cheat is caught after one batch)."""
        seed = b"".join(self.relay.receive(passive, RelayKind.PROBE_SEED, step)[1])
        totals, commitment = answered
        batch = len(residual) // columns
        context = probe_context(self.job_id, passive, step, columns, batch)
        try:
            check_revealed_probe(seed, commitment, context, totals, residual, columns, batch, codec.encrypted)
        except ExchangeRefused as exc:
            self._refuse(passive, step, exc.check, f"{passive}'s probe at batch {step}: {exc}")

    def _refuse(self, passive: str, step: int, check: str, reason: str) -> NoReturn:
        """Audit a refused exchange with a passive party and end the job (raised to :meth:`_run`)."""
        self.events.record(
            "vertical_exchange_refused",
            self.name,
            job=self.job_id,
            check=check,
            step=step,
            sender=passive,
            reason=reason,
        )
        raise VerticalError(f"refused {passive}'s {check} at batch {step}: {reason}")

    def _joint_test(
        self, codec: VectorCodec, x: np.ndarray, y: np.ndarray, test: np.ndarray, step: int
    ) -> dict[str, float]:
        """Score the held-out aligned entities with every party's partial score (as predictions are)."""
        if len(test) == 0:
            return {}
        scores = self.joint_scores(codec, x, test, seq=step + 1)
        from sklearn.metrics import roc_auc_score

        metrics = {
            "test_accuracy": float(((scores > 0.5) == (y[test] > 0.5)).mean()),
        }
        if len(set(y[test].tolist())) == 2:
            metrics["test_auc"] = float(roc_auc_score(y[test], scores))
        return metrics

    def joint_scores(self, codec: VectorCodec, x: np.ndarray, positions: np.ndarray, seq: int) -> np.ndarray:
        request = json.dumps({"positions": [int(p) for p in positions]}).encode()
        for passive in self.vertical.passive:
            self.relay.send_blob(passive, PartyKind.PREDICT_REQUEST, seq, request)
        total = codec.decrypt(self.relay.receive(AGGREGATOR_RECIPIENT, RelayKind.SUMMED_PREDICTIONS, seq)[1])[
            : len(positions)
        ]
        return sigmoid(x[positions] @ self.weights + self.bias + total)

    def _save(self, codec: VectorCodec) -> None:
        np.savez(
            self.directory / "vertical_model.npz",
            weights=self.weights,
            bias=np.asarray(self.bias),
            mean=self.mean,
            std=self.std,
        )
        (self.directory / "aligned_ids.json").write_text(json.dumps(self.aligned_ids))
        (self.directory / "job_spec.json").write_text(self.spec.model_dump_json())
        self.events.record(
            "model_exported",
            self.name,
            job=self.job_id,
            path=str(self.directory / "vertical_model.npz"),
            parameters=len(self.weights) + 1,
            holds="own weights and the intercept only",
        )
