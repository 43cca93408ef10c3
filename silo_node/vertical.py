"""Vertical jobs at a silo: entity alignment by PSI, then logistic regression across parties.

The active party holds the labels and some features; each passive party holds other features of
the same entities. Every message goes through the aggregator's relay. Per mini-batch:

1. each passive sends Enc(X_k w_k) to the aggregator, which sums them for the active party;
2. the active party decrypts the sum U, computes z = X_A w_A + b + U, the exact sigmoid and the
   residual d = p - y, updates its own weights, and sends each passive Enc(d) tiled across that
   passive's feature columns;
3. the passive first probes that ciphertext: it multiplies it by secret random decoy columns,
   masks, and checks the masked totals the active party returns against what residuals with
   |d| <= 1 allow (``vertical_guard``); only then does it multiply the same ciphertext by its
   columns laid side by side (one plaintext multiplication, no rotations), add a fresh random
   mask per slot (as a fresh encryption), and send the result to the active party;
4. the active party decrypts, sums each column's segment and returns the masked sums; the passive
   removes its masks, refuses sums beyond what |d| <= 1 allows, and updates its weights.

Each party standardises its own columns with its own statistics; nobody learns another's. The
aligned entities are split into training and test positions by the job seed, so all parties agree
on the split without exchanging anything.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.events import EventSink
from crypto.endorsement import (
    Endorsement,
    EndorsementError,
    TrustAnchors,
    endorse,
    load_custodian_cert,
    sha256_hex,
    verify_endorsement,
)
from crypto.errors import CryptoError
from crypto.keys import PublicContext, generate_key_set, load_public_context, load_secret_key_set
from crypto.pki import write_secret_file
from crypto.psi import PsiError, PsiParty, match
from crypto.vertical_codec import VectorCodec, columns_side_by_side, segment_sums, tile
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import JobSpec
from silo_node.client import AggregatorClient
from silo_node.data import LocalData
from silo_node.vertical_guard import (
    MAX_PROBES,
    ExchangeRefused,
    check_gradient,
    check_probe,
    draw_decoys,
    draw_masks,
)

_log = logging.getLogger(__name__)

AGGREGATOR = "aggregator"
MAX_PART = 1 << 20  # relay messages stay far below gRPC's 4 MiB default
TEST_FRACTION = 0.2


# What each kind of message carries, as the compliance report states it.
MESSAGE_FORMS = {
    "psi-a": "blinded ids (X25519)",
    "psi-b": "blinded ids (X25519)",
    "psi-ab": "blinded ids (X25519)",
    "meta": "feature count",
    "align": "aligned positions (alignment)",
    "predict-req": "aligned positions (prediction request)",
    "u": "partial scores",
    "p": "partial scores",
    "d": "residuals",
    "g": "masked gradient products",
    "m": "masked per-column sums",  # per batch: first the decoy totals, then the gradient's sums
    "decoy": "masked decoy products (probe of the residual)",
}
ENCRYPTED_KINDS = {"u", "p", "d", "g", "decoy"}


def record_data_sent(events: EventSink, party: str, job_id: str, relay: Relay, encrypted: bool) -> None:
    """One audit record per recipient and kind of message: what left this party, and in what form."""
    for (to, kind), (messages, nbytes) in sorted(relay.sent.items()):
        form = MESSAGE_FORMS.get(kind, kind)
        is_encrypted = encrypted and kind in ENCRYPTED_KINDS
        if kind in ENCRYPTED_KINDS:
            form = f"{form} ({'CKKS ciphertext' if is_encrypted else 'plaintext comparison run'})"
        events.record(
            "data_sent",
            party,
            job=job_id,
            to=to,
            kind=kind,
            form=form,
            messages=messages,
            bytes=nbytes,
            encrypted=is_encrypted,
        )


class VerticalError(Exception):
    """The job cannot go on (alignment failed, a party went away); the reason goes to everyone."""


class Relay:
    """Messages to and from other parties of one job, through the aggregator."""

    def __init__(
        self, client: AggregatorClient, job_id: str, should_stop: Callable[[], bool], timeout_s: float = 600.0
    ) -> None:
        self.client, self.job_id, self.should_stop, self.timeout_s = client, job_id, should_stop, timeout_s
        self.on_receive: Callable[[str, str, int, list[bytes]], None] | None = None  # tests record the wire here
        self.sent: dict[tuple[str, str], list[int]] = {}  # (recipient, kind) -> [messages, bytes], for the audit

    def send(self, to: str, kind: str, seq: int, payloads: list[bytes]) -> None:
        if any(len(p) > MAX_PART for p in payloads):
            raise ValueError("payload too large for one relay message: use send_blob")
        messages = [
            pb.RelayMessage(job_id=self.job_id, to=to, kind=kind, seq=seq, payload=p, last=i == len(payloads) - 1)
            for i, p in enumerate(payloads)
        ]
        self.client.call(lambda: self.client.stub.Send(iter(messages), timeout=120), retries=5)
        tally = self.sent.setdefault((to, kind), [0, 0])
        tally[0] += 1
        tally[1] += sum(len(p) for p in payloads)

    def send_blob(self, to: str, kind: str, seq: int, data: bytes) -> None:
        self.send(to, kind, seq, [data[i : i + MAX_PART] for i in range(0, max(len(data), 1), MAX_PART)])

    def receive(self, sender: str, kind: str, seq: int) -> tuple[int, list[bytes]]:
        deadline = time.time() + self.timeout_s
        while True:
            if self.should_stop():
                raise VerticalError("the job was ended while waiting for the other parties")
            replies = self.client.call(lambda: self._receive_once(sender, kind, seq), retries=5)
            if replies:
                payloads = [bytes(r.payload) for r in replies]
                if self.on_receive is not None:
                    self.on_receive(sender, kind, int(replies[0].seq), payloads)
                return int(replies[0].seq), payloads
            if time.time() > deadline:
                raise VerticalError(f"timed out waiting for {kind!r} #{seq} from {sender}")

    def _receive_once(self, sender: str, kind: str, seq: int) -> list[pb.RelayMessage]:
        request = pb.ReceiveRequest(job_id=self.job_id, kind=kind, seq=seq, sender=sender, wait_ms=5000)
        return list(self.client.stub.Receive(request, timeout=30))

    def receive_blob(self, sender: str, kind: str, seq: int) -> bytes:
        return b"".join(self.receive(sender, kind, seq)[1])

    def receive_json(self, sender: str, kind: str, seq: int = 0) -> Any:
        return json.loads(self.receive_blob(sender, kind, seq))


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-8] = 1.0
    return mean, std


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def train_positions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned positions for training and for the joint test, from the job seed alone."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def batches(train: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(train)
    return [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]


@dataclass(frozen=True)
class PartyCredentials:
    """This node's certificate key (the active party signs the job's public key with it) and the
    anchors a passive party checks that signature against."""

    consortium: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    trust: TrustAnchors


@dataclass
class Party:
    job_id: str
    spec: JobSpec
    name: str
    data: LocalData
    relay: Relay
    client: AggregatorClient
    events: EventSink
    directory: Path
    credentials: PartyCredentials | None = None

    @property
    def vertical(self) -> Any:
        assert self.spec.vertical is not None
        return self.spec.vertical


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
            self.relay.send_blob(passive, "psi-a", 0, b"".join(mine))
        common: set[int] | None = None
        matches: dict[str, dict[int, int]] = {}
        meta: dict[str, dict[str, Any]] = {}
        for passive in self.vertical.passive:
            theirs = _points(self.relay.receive_blob(passive, "psi-b", 0))
            ours_by_them = _points(self.relay.receive_blob(passive, "psi-ab", 0))
            meta[passive] = self.relay.receive_json(passive, "meta")
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
            self.relay.send_blob(passive, "align", 0, json.dumps({"positions": positions}).encode())
        self.passive_columns = {p: int(m["features"]) for p, m in meta.items()}
        return {self.name: np.asarray(common_rows)}

    def _train(self, codec: VectorCodec, rows_by_party: dict[str, np.ndarray]) -> dict[str, float]:
        rows = rows_by_party[self.name]
        assert self.data.labels is not None
        x_all, y = self.data.features[rows], self.data.labels[rows].astype(np.float64)
        mean, std = _standardize(x_all)
        x = (x_all - mean) / std
        n, spec = len(rows), self.spec
        train, test = train_positions(n, spec.seed)
        w, b = np.zeros(x.shape[1]), 0.0
        step = 0
        for epoch in range(spec.rounds):
            losses, correct = [], 0
            for idx in batches(train, spec.batch_size, spec.seed, epoch):
                step += 1
                u = codec.decrypt(self.relay.receive(AGGREGATOR, "U", step)[1])[: len(idx)]
                p = _sigmoid(x[idx] @ w + b + u)
                d = p - y[idx]
                w -= spec.lr * (x[idx].T @ d / len(idx) + spec.model.l2 * w)
                b -= spec.lr * float(d.mean())
                chunks = {}
                for passive, columns in self.passive_columns.items():
                    chunks[passive] = len(sent := codec.encrypt(tile(d, columns)))
                    self.relay.send(passive, "d", step, sent)
                for passive, columns in self.passive_columns.items():
                    self._answer_probe(codec, passive, step, chunks[passive], columns * len(idx))
                for passive, columns in self.passive_columns.items():
                    masked = codec.decrypt(self.relay.receive(passive, "g", step)[1])
                    sums = segment_sums(masked, columns, len(idx))
                    self.relay.send(passive, "m", step, [sums.astype("<f8").tobytes()])
                losses.append(float(-np.mean(y[idx] * np.log(p + 1e-12) + (1 - y[idx]) * np.log(1 - p + 1e-12))))
                correct += int(((p > 0.5) == (y[idx] > 0.5)).sum())
            metrics = {"loss": float(np.mean(losses)), "accuracy": correct / max(len(train), 1)}
            self.client.report_metrics(self.job_id, epoch, metrics, self.events.head)  # anchors our audit log
        self.weights, self.bias, self.mean, self.std = w, b, mean, std
        self.aligned_ids = [self.data.ids[r] for r in rows] if self.data.ids else []
        test_metrics = self._joint_test(codec, x, y, test, step)
        self._save(codec)
        return test_metrics

    def _answer_probe(self, codec: VectorCodec, passive: str, step: int, chunks: int, slots: int) -> None:
        """Decrypt a passive's decoy products and return one masked total per decoy, real parts then
        imaginary parts (the checks are the passive's; an honest residual passes them)."""
        parts = self.relay.receive(passive, "decoy", step)[1]
        probes = len(parts) // chunks
        if len(parts) % chunks or not 1 <= probes <= MAX_PROBES:
            raise VerticalError(f"{passive} sent {len(parts)} decoy chunks; a multiple of {chunks} expected")
        totals = np.asarray(
            [codec.decrypt_products(parts[k * chunks : (k + 1) * chunks])[:slots].sum() for k in range(probes)]
        )
        # kind "m", seq step: the passive takes this reply before it sends "g", so the gradient's sums
        # under the same (kind, seq) never meet it in the relay
        self.relay.send(passive, "m", step, [np.r_[totals.real, totals.imag].astype("<f8").tobytes()])

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
            self.relay.send_blob(passive, "predict-req", seq, request)
        total = codec.decrypt(self.relay.receive(AGGREGATOR, "P", seq)[1])[: len(positions)]
        return _sigmoid(x[positions] @ self.weights + self.bias + total)

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
        theirs = _points(self.relay.receive_blob(active, "psi-a", 0))
        self.relay.send_blob(active, "psi-b", 0, b"".join(psi.blinded()))
        self.relay.send_blob(active, "psi-ab", 0, b"".join(psi.blind(theirs)))
        self.relay.send_blob(active, "meta", 0, json.dumps({"features": self.data.features.shape[1]}).encode())
        reply = self.relay.receive_json(active, "align")
        rows = np.asarray([psi.order[pos] for pos in reply["positions"]], dtype=np.int64)
        self.events.record(
            "entities_aligned", self.name, job=self.job_id, intersection=len(rows), local_rows=self.data.rows
        )
        return rows

    def _train(self, codec: VectorCodec, rows: np.ndarray) -> None:
        spec, active = self.spec, self.vertical.active
        x_all = self.data.features[rows]
        mean, std = _standardize(x_all)
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
                self.relay.send(AGGREGATOR, "u", step, codec.encrypt(u))
                residual = codec.load_residual(self.relay.receive(active, "d", step)[1], x.shape[1] * len(idx))
                self._probe(codec, residual, x.shape[1], len(idx), step, masks)
                mask = draw_masks(masks, x.shape[1] * len(idx), codec.encrypted)
                self.relay.send(active, "g", step, codec.products(residual, columns_side_by_side(x[idx]), mask))
                masked_sums = _floats(self.relay.receive(active, "m", step)[1])
                mask_sums = mask.real.reshape(x.shape[1], len(idx)).sum(axis=1)
                sums = self._guarded(check_gradient, step, masked_sums, mask_sums, x[idx])
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

    def _probe(
        self, codec: VectorCodec, residual: list[Any], columns: int, batch: int, step: int, rng: np.random.Generator
    ) -> None:
        """Check the residual with secret decoys before any product of our features is computed from it."""
        decoys = draw_decoys(rng, columns, batch)
        masks = np.stack([draw_masks(rng, columns * batch, codec.encrypted) for _ in decoys])
        parts = [chunk for c, m in zip(decoys, masks, strict=True) for chunk in codec.products(residual, c, m)]
        self.relay.send(self.vertical.active, "decoy", step, parts)
        reply = _floats(self.relay.receive(self.vertical.active, "m", step)[1])  # taken before "g" is sent
        totals = reply[: len(reply) // 2] + 1j * reply[len(reply) // 2 :] if len(reply) % 2 == 0 else reply
        self._guarded(check_probe, step, totals, masks, decoys, columns, batch)

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
                seq, parts = self.relay.receive(active, "predict-req", -1)
            except VerticalError:
                return
            positions = np.asarray(json.loads(b"".join(parts))["positions"], dtype=np.int64)
            self.relay.send(AGGREGATOR, "p", seq, codec.encrypt(self.x[positions] @ self.weights))
            self.events.record("partial_scores_sent", self.name, job=self.job_id, entities=len(positions))
            if once:
                return


def _floats(payloads: list[bytes]) -> np.ndarray:
    """A plaintext reply of float64 values (its length and finiteness are the caller's checks)."""
    blob = b"".join(payloads)
    if len(blob) % 8:
        raise VerticalError(f"a reply of {len(blob)} bytes is not a whole number of float64 values")
    return np.frombuffer(blob, dtype="<f8")


def _points(blob: bytes) -> list[bytes]:
    if len(blob) % 32:
        raise PsiError("a blinded set is not a whole number of 32-byte points")
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]


class VerticalRunner:
    """Runs one party's side of a vertical job in its own thread, so the node keeps polling."""

    def __init__(self, party: ActiveParty | PassiveParty, on_error: Callable[[str], None]) -> None:
        self.party = party
        self.stopped = threading.Event()
        self.status = "running"
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name=f"vertical-{party.job_id}", daemon=True)

    def _run(self) -> None:
        try:
            self.party.run()
            self.status = "done"
        except Exception as exc:  # any failure is reported, never fatal for the node
            self.status = "failed"
            if self.stopped.is_set():
                return  # the job already ended elsewhere (failed, aborted): nothing left to tell
            reason = str(exc) if isinstance(exc, VerticalError) else f"{type(exc).__name__}: {exc}"
            try:
                self._on_error(reason)
            except Exception as report_exc:  # e.g. the aggregator is unreachable: keep the node alive
                _log.warning(
                    "vertical job %s failed (%s) and the failure could not be reported: %s",
                    self.party.job_id,
                    reason,
                    report_exc,
                )

    def step(self, task: pb.Task) -> None:
        if not self._thread.is_alive() and self.status == "running":
            self._thread.start()
        if task.job_status in ("failed", "aborted"):
            self.stopped.set()


def load_active_for_prediction(directory: Path) -> tuple[JobSpec, VectorCodec, dict[str, Any]]:
    """What `job predict` needs at the active party: spec, secret codec, model and aligned ids."""
    spec = JobSpec.model_validate_json((directory / "job_spec.json").read_text())
    codec = VectorCodec(None)
    if spec.he_profile != "none":
        codec = VectorCodec(load_secret_key_set((directory / "vertical.key").read_bytes()).public.tenseal_context)
    with np.load(directory / "vertical_model.npz") as stored:
        model = {k: stored[k] for k in stored.files}
    model["aligned_ids"] = json.loads((directory / "aligned_ids.json").read_text())
    return spec, codec, model
