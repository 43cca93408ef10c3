"""A passive party of a vertical job: a feature holder that aligns, trains its own weights from encrypted
residuals (after probing each one with secret decoys), and answers prediction requests."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from crypto.endorsement import (
    Endorsement,
    EndorsementError,
    TrustAnchors,
    load_custodian_cert,
    sha256_hex,
    verify_endorsement,
)
from crypto.errors import CryptoError
from crypto.keys import PublicContext, load_public_context
from crypto.psi import PsiParty
from crypto.vertical_codec import VectorCodec, columns_side_by_side
from protocol import cipherfed_pb2 as pb
from protocol.vocabulary import AGGREGATOR_RECIPIENT, RelayKind
from silo_node.relay import PartyKind, VerticalError, read_floats, read_points, record_data_sent
from silo_node.vertical_guard import (
    SEED_BYTES,
    ExchangeRefused,
    check_gradient,
    check_probe,
    derive_probe,
    draw_masks,
    probe_commitment,
    probe_context,
)
from silo_node.vertical_party import Party, batches, standardize, train_positions


class PassiveParty(Party):
    """A feature holder: aligns, trains its own weights, then answers prediction requests."""

    def run(self) -> None:
        try:
            codec = self._codec()
            rows = self._align()
            self._train(codec, rows)
        finally:
            record_data_sent(self.events, self.name, self.job_id, self.relay, self.spec.he_profile != "none")
        self.serve_predictions(codec)

    def _codec(self) -> VectorCodec:
        """The active party's public context (published when the job starts); never a secret key."""
        import grpc

        if self.spec.he_profile == "none":
            return VectorCodec(None)
        deadline = time.time() + self.relay.timeout_s
        while True:
            try:
                reply = self.client.stub.GetKeyMaterial(pb.KeyMaterialRequest(scope=self.job_id), timeout=30)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            else:
                public = self._endorsed_public(reply)
                self.events.record(
                    "public_context_received", self.name, job=self.job_id, fingerprint=public.fingerprint
                )
                return VectorCodec(public.tenseal_context)
            if self.relay.should_stop() or time.time() > deadline:
                raise VerticalError("the active party never published the job's public key")
            time.sleep(0.2)

    def _endorsed_public(self, reply: pb.KeyMaterialReply) -> PublicContext:
        """The relayed public context, only if the job's active party signed exactly this key for this job
        (whoever else stored it, the aggregator included, cannot make this node encrypt to its key)."""
        active = self.vertical.active
        try:
            if self.credentials is None:
                raise EndorsementError("this node has no trust anchors to check the active party's signature")
            export = bytes(reply.public_context)
            endorsement = Endorsement.decode(bytes(reply.endorsement))
            cert = load_custodian_cert(bytes(reply.custodian_cert))
            trust = self.credentials.trust
            verify_endorsement(
                endorsement,
                cert,
                TrustAnchors(trust.ca_cert, trust.revocation, None),  # the job names its custodian: the active party
                consortium=self.credentials.consortium,
                scope=self.job_id,
                custodian_name=active,
            )
            if endorsement.public_context_sha256 != sha256_hex(export):
                raise EndorsementError("the relayed public context is not the one the active party signed")
            public = load_public_context(export)  # refuses a secret key
            if public.fingerprint != endorsement.fingerprint or public.profile.name != "vertical":
                raise EndorsementError("the public context's fingerprint differs from the endorsed one")
        except CryptoError as exc:
            self.events.record(
                "key_refused", self.name, job=self.job_id, key=str(reply.fingerprint)[:64], reason=str(exc)
            )
            raise VerticalError(f"the job's public key is not endorsed by its active party {active}: {exc}") from None
        return public

    def _align(self) -> np.ndarray:
        assert self.data.ids is not None
        active = self.vertical.active
        psi = PsiParty(self.data.ids, self.job_id)
        theirs = read_points(self.relay.receive_blob(active, PartyKind.PSI_A, 0))
        self.relay.send_blob(active, PartyKind.PSI_B, 0, b"".join(psi.blinded()))
        self.relay.send_blob(active, PartyKind.PSI_AB, 0, b"".join(psi.blind(theirs)))
        self.relay.send_blob(active, PartyKind.META, 0, json.dumps({"features": self.data.features.shape[1]}).encode())
        reply = self.relay.receive_json(active, PartyKind.ALIGN)
        positions = self._checked_positions(reply, len(psi.order))
        rows = np.asarray([psi.order[pos] for pos in positions], dtype=np.int64)
        self.events.record(
            "entities_aligned", self.name, job=self.job_id, intersection=len(rows), local_rows=self.data.rows
        )
        return rows

    def _checked_positions(self, reply: Any, sent: int) -> list[int]:
        """The active party's alignment positions, only if they name at least ``min_entities`` distinct
        entities among the ``sent`` we blinded: a repeated or out-of-range position would let it train on
        (and read partial scores of) fewer entities than the job promises, or wrap around silently."""
        positions = reply.get("positions") if isinstance(reply, dict) else None
        reason = ""
        if not isinstance(positions, list) or not all(type(p) is int for p in positions):
            reason = "positions: a list of integers expected"
        elif not all(0 <= p < sent for p in positions):
            reason = f"positions: every position must lie in [0, {sent}) (the entities this party blinded)"
        elif len(set(positions)) != len(positions):
            reason = f"positions: {len(positions) - len(set(positions))} repeated; each entity may appear once"
        elif len(positions) < self.vertical.min_entities:
            reason = f"positions: {len(positions)} entities; the job needs at least {self.vertical.min_entities}"
        if reason:
            self.events.record(
                "vertical_exchange_refused",
                self.name,
                job=self.job_id,
                check="alignment",
                step=0,
                sender=self.vertical.active,
                reason=reason,
            )
            raise VerticalError(f"refused the active party's alignment: {reason}; no training took place")
        return [int(p) for p in positions or []]

    def _train(self, codec: VectorCodec, rows: np.ndarray) -> None:
        spec, active = self.spec, self.vertical.active
        x_all = self.data.features[rows]
        mean, std = standardize(x_all)
        x = (x_all - mean) / std
        train, _ = train_positions(len(rows), spec.seed)
        w = np.zeros(x.shape[1])
        noise = np.random.default_rng(secrets.randbits(64))
        masks = np.random.default_rng(secrets.randbits(64))
        step = 0
        for epoch in range(spec.rounds):
            for idx in batches(train, spec.batch_size, spec.seed, epoch):
                step += 1
                u = x[idx] @ w
                if self.vertical.passive_noise_std > 0:
                    u = u + noise.normal(0, self.vertical.passive_noise_std, len(u))
                self.relay.send(AGGREGATOR_RECIPIENT, RelayKind.PARTIAL_SCORES, step, codec.encrypt(u))
                residual = codec.load_residual(
                    self.relay.receive(active, RelayKind.RESIDUALS, step)[1], x.shape[1] * len(idx)
                )
                seed = self._probe(codec, residual, x.shape[1], len(idx), step)
                mask = draw_masks(masks, x.shape[1] * len(idx), codec.encrypted)
                self.relay.send(
                    active,
                    RelayKind.MASKED_PRODUCTS,
                    step,
                    codec.products(residual, columns_side_by_side(x[idx]), mask),
                )
                masked_sums = read_floats(self.relay.receive(active, RelayKind.MASKED_SUMS, step)[1])
                mask_sums = mask.real.reshape(x.shape[1], len(idx)).sum(axis=1)
                sums = self._guarded(check_gradient, step, masked_sums, mask_sums, x[idx])
                self.relay.send(active, RelayKind.PROBE_SEED, step, [seed])  # opens the commitment: decoys only
                w -= spec.lr * (sums / len(idx) + spec.model.l2 * w)
        self.x, self.weights = x, w
        np.savez(self.directory / "vertical_model.npz", weights=w, mean=mean, std=std, rows=rows)
        self.events.record(
            "model_exported",
            self.name,
            job=self.job_id,
            path=str(self.directory / "vertical_model.npz"),
            parameters=len(w),
            holds="own weights only",
        )

    def _probe(self, codec: VectorCodec, residual: list[Any], columns: int, batch: int, step: int) -> bytes:
        """Check the residual with secret decoys before any product of our features is computed from it.

        The decoys and their masks come from a fresh seed whose commitment goes with the products; the
        seed (returned) is revealed after the batch, so the active party can check they were Gaussian.
        """
        seed = secrets.token_bytes(SEED_BYTES)
        decoys, masks = derive_probe(seed, columns, batch, codec.encrypted)
        context = probe_context(self.job_id, self.name, step, columns, batch)
        parts = [chunk for c, m in zip(decoys, masks, strict=True) for chunk in codec.products(residual, c, m)]
        self.relay.send(self.vertical.active, RelayKind.PROBE_COMMITMENT, step, [probe_commitment(seed, context)])
        self.relay.send(self.vertical.active, RelayKind.DECOY_PRODUCTS, step, parts)
        reply = read_floats(
            self.relay.receive(self.vertical.active, RelayKind.MASKED_SUMS, step)[1]
        )  # taken before "g" is sent
        totals = reply[: len(reply) // 2] + 1j * reply[len(reply) // 2 :] if len(reply) % 2 == 0 else reply
        self._guarded(check_probe, step, totals, masks, decoys, columns, batch)
        return seed

    def _guarded(self, check: Callable[..., np.ndarray], step: int, *args: Any) -> np.ndarray:
        """Run a check; a refusal is audited here and ends this party's part in the job."""
        try:
            return check(*args)
        except ExchangeRefused as exc:
            self.events.record(
                "vertical_exchange_refused",
                self.name,
                job=self.job_id,
                check=exc.check,
                step=step,
                sender=self.vertical.active,
                reason=str(exc),
            )
            raise VerticalError(f"refused the active party's {exc.check} at batch {step}: {exc}") from None

    def serve_predictions(self, codec: VectorCodec, once: bool = False) -> None:
        """Partial scores for prediction requests, until the node stops (or the job failed)."""
        active = self.vertical.active
        while not self.relay.should_stop():
            try:
                seq, parts = self.relay.receive(active, PartyKind.PREDICT_REQUEST, -1)
            except VerticalError:
                return
            positions = np.asarray(json.loads(b"".join(parts))["positions"], dtype=np.int64)
            self.relay.send(
                AGGREGATOR_RECIPIENT, RelayKind.PREDICTION_SCORES, seq, codec.encrypt(self.x[positions] @ self.weights)
            )
            self.events.record("partial_scores_sent", self.name, job=self.job_id, entities=len(positions))
            if once:
                return
