"""Vertical jobs against a malicious active party (issue 11, item 3).

The active party holds the job's secret key, chooses the encrypted residual and decrypts every masked
per-slot product. The attacks here scale the residual (to read the passive's features through its
masks) and lie about the masked sums (to steer the passive's weights). The passive party is the real
node process (`cipherfed node`, over mTLS through a real aggregator process); the attacker is the
hospital, driven in this process through the real ActiveParty code for keys and alignment and its own
code for the training exchange. The defences live at the victim: `silo_node/vertical_guard.py`.
"""

from __future__ import annotations

import json
import re
import time

import grpc
import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as seal

from audit.events import LogSink
from cipherfed.demo_vertical import PARTIES, vertical_job_toml, write_party_data
from cipherfed.localconsortium import LocalConsortium
from crypto.errors import CiphertextError
from crypto.keys import generate_key_set, load_public_context
from crypto.psi import normalize_id
from crypto.seal_io import save_bytes
from crypto.vertical_codec import VectorCodec, columns_side_by_side, segment_sums, tile
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import parse_job_spec
from silo_node.client import AggregatorClient
from silo_node.data import load_columns
from silo_node.vertical import AGGREGATOR, ActiveParty, Relay, VerticalError, batches, train_positions
from silo_node.vertical_guard import (
    MASK_BOUND,
    ExchangeRefused,
    check_gradient,
    check_probe,
    decoy_bounds,
    draw_decoys,
    draw_masks,
)
from tests.helpers import party_credentials

SCALE = 1e5  # the reproduced attack: residuals x 1e5
LAB = range(10, 20)  # the lab's columns in the demo data


# ----------------------------------------------------------------------------------------------
# The passive's checks on their own (real CKKS where the numbers come from a ciphertext)


@pytest.fixture(scope="module")
def codecs():
    keys = generate_key_set("vertical")
    return VectorCodec(keys.public.tenseal_context), VectorCodec(
        load_public_context(keys.export_public()).tenseal_context
    )


def _probe(active, passive, residual_chunks, columns, batch, rng):
    """One probe as the protocol runs it: decoy products of the residual, masked complex totals, the check."""
    residual = passive.load_residual(residual_chunks, columns * batch)
    decoys = draw_decoys(rng, columns, batch)
    masks = np.stack([draw_masks(rng, columns * batch, True) for _ in decoys])
    totals = [
        active.decrypt_products(passive.products(residual, c, m))[: columns * batch].sum()
        for c, m in zip(decoys, masks)
    ]
    return check_probe(np.asarray(totals), masks, decoys, columns, batch)


def _probe_through_ckks(active, passive, d, columns, rng):
    return _probe(active, passive, active.encrypt(tile(d, columns)), columns, len(d), rng)


def test_an_honest_residual_at_the_worst_case_bound_passes_the_probe_through_ckks(codecs):
    active, passive = codecs
    rng = np.random.default_rng(1)
    batch, columns = 32, 10
    # the largest totals an honest party can produce: |d_i| just below 1 with the sign of the decoys'
    # per-entity sum (chosen knowing the decoys, which a real active party does not)
    decoys = draw_decoys(np.random.default_rng(7), columns, batch, probes=3)
    for k in range(len(decoys)):
        d = np.sign(decoys[k].reshape(columns, batch).sum(axis=0)) * (1 - 1e-12)
        residual = passive.load_residual(active.encrypt(tile(d, columns)), columns * batch)
        masks = np.stack([draw_masks(rng, columns * batch, True) for _ in decoys])
        totals = [
            active.decrypt_products(passive.products(residual, c, m))[: columns * batch].sum()
            for c, m in zip(decoys, masks)
        ]
        unmasked = check_probe(np.asarray(totals), masks, decoys, columns, batch)
        assert abs(unmasked[k].real) == pytest.approx(decoy_bounds(decoys, columns, batch)[k], rel=1e-6)
    for _ in range(3):  # and ordinary residuals, far inside the bound
        _probe_through_ckks(active, passive, rng.uniform(-1, 1, batch), columns, rng)


def test_a_scaled_residual_fails_the_probe_whatever_the_active_party_returns(codecs):
    active, passive = codecs
    rng = np.random.default_rng(2)
    with pytest.raises(ExchangeRefused, match="decoy checks"):
        _probe_through_ckks(active, passive, SCALE * rng.uniform(-1, 1, 32), 10, rng)
    # one entity scaled by a modest 64 batches' worth is still caught in (at least) 7 of 8 decoys
    d = rng.uniform(-1, 1, 32)
    d[5] = 64 * 32
    with pytest.raises(ExchangeRefused, match=r"failed [78] of 8 decoy checks"):
        _probe_through_ckks(active, passive, d, 10, rng)


def test_the_probability_a_scaled_entity_passes_one_decoy_is_within_the_documented_bound():
    """docs/security.md: P(pass one decoy) <= 0.8 B/s + B/R for an entry of size s, any reply strategy.

    The reply that maximises it without knowing the decoys returns the honest masked total when
    |s c| is likely below B; measured here for that reply, in plaintext (the slot algebra is the same).
    """
    rng = np.random.default_rng(3)
    batch, columns, s, trials = 32, 10, 2000.0, 4000
    passed, bound = 0, 0.0
    for _ in range(trials):
        d = rng.uniform(-1, 1, batch)
        d[0] = s
        decoys = draw_decoys(rng, columns, batch, probes=1)
        masks = rng.uniform(-MASK_BOUND, MASK_BOUND, decoys.shape)
        totals = np.array([(tile(d, columns) * decoys[0] + masks[0]).sum()])
        b = float(decoy_bounds(decoys, columns, batch)[0])
        bound += (0.8 * b / s + b / MASK_BOUND) / trials
        try:
            check_probe(totals, masks, decoys, columns, batch)
            passed += 1
        except ExchangeRefused:
            pass
    assert passed / trials <= bound * 1.2 + 0.005, (passed / trials, bound)
    assert bound < 0.1  # so 8 decoys pass it with probability < 1e-8


def test_a_lying_masked_sum_is_refused_by_the_gradient_bound():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 10))
    mask_sums = rng.uniform(-MASK_BOUND, MASK_BOUND, 10) * 32
    honest = x.T @ rng.uniform(-1, 1, 32)
    assert np.allclose(check_gradient(honest + mask_sums, mask_sums, x), honest)
    extreme = x.T @ np.sign(x[:, 3]) * (1 - 1e-12)  # the largest column 3 an honest residual allows
    check_gradient(extreme + mask_sums, mask_sums, x)
    lie = honest.copy()
    lie[3] = 1.05 * np.abs(x[:, 3]).sum()
    with pytest.raises(ExchangeRefused, match="column 3"):
        check_gradient(lie + mask_sums, mask_sums, x)
    for bad in (np.r_[honest, 0.0], np.where(np.arange(10) == 2, np.nan, honest)):
        with pytest.raises(ExchangeRefused, match="10 finite values expected"):
            check_gradient(bad + np.r_[mask_sums, 0.0][: len(bad)], mask_sums, x)


def test_a_residual_ciphertext_at_another_scale_is_refused_before_any_product(codecs):
    active, passive = codecs
    d = np.random.default_rng(5).uniform(-1, 1, 40)
    crafted = ts.ckks_vector(active.context, d.tolist(), scale=2.0**20).serialize()  # lets A out-scale the range
    with pytest.raises(CiphertextError, match="scale 2\\^20.0 is not the job's 2\\^40.0"):
        passive.load_residual([crafted], 40)
    with pytest.raises(CiphertextError, match="slots"):
        passive.load_residual(active.encrypt(d), 41)


def test_the_products_a_passive_returns_are_rerandomized(codecs):
    """Without a fresh encryption in the result, its second polynomial is a deterministic function of
    the active party's ciphertext and the passive's plaintext (readable back with a crafted c1)."""
    active, passive = codecs
    rng = np.random.default_rng(6)
    residual = passive.load_residual(active.encrypt(rng.uniform(-1, 1, 40)), 40)
    x, zeros = rng.normal(size=40), np.zeros(40, dtype=complex)
    first, second = (passive.products(residual, x, zeros)[0] for _ in range(2))
    assert first != second  # same inputs, fresh randomness: nothing deterministic for the key holder to invert
    assert np.abs(active.decrypt([first]) - active.decrypt([second])).max() < 1e-5


def _fields(blob: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level protobuf fields (TenSEAL's vector serialization) - enough to swap its ciphertext."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = blob[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i

    out, i = [], 0
    while i < len(blob):
        tag, i = varint(i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = varint(i)
        elif wire == 1:
            value, i = blob[i : i + 8], i + 8
        else:
            assert wire == 2
            n, i = varint(i)
            value, i = blob[i : i + n], i + n
        out.append((field, wire, value))
    return out


def _varint(x: int) -> bytes:
    out = bytearray()
    while True:
        out.append((x & 0x7F) | (0x80 if x > 0x7F else 0))
        x >>= 7
        if not x:
            return bytes(out)


def craft_complex_residual(context, values: np.ndarray) -> bytes:
    """What a key-holding active party can send: a TenSEAL vector whose slots are complex.

    TenSEAL encrypts reals only, so this encodes and encrypts with SEAL and swaps the ciphertext into
    a TenSEAL serialization. Decrypted through TenSEAL it shows only the real parts.
    """
    sc = context.seal_context().data
    plain, ciphertext = seal.Plaintext(), seal.Ciphertext()
    seal.CKKSEncoder(sc).encode([complex(v) for v in values], context.global_scale, plain)
    seal.Encryptor(sc, context.public_key().data).encrypt(plain, ciphertext)
    out = bytearray()
    for field, wire, value in _fields(ts.ckks_vector(context, [0.0] * len(values)).serialize()):
        value = save_bytes(ciphertext) if field == 2 else value
        out += _varint(field << 3 | wire)
        out += _varint(value) if wire == 0 else (_varint(len(value)) + value if wire == 2 else value)
    return bytes(out)


def test_an_imaginary_residual_reads_nothing_and_fails_the_probe(codecs):
    """The residual's real parts are honest; its imaginary parts are 1, so each product's imaginary part
    is the passive's feature value. The masks cover it, and the probe refuses the residual."""
    active, passive = codecs
    rng = np.random.default_rng(8)
    batch, columns = 32, 10
    d = rng.uniform(-1, 1, batch)
    crafted = craft_complex_residual(active.context, tile(d, columns) + 1j)
    assert np.allclose(active.decrypt([crafted])[: batch * columns], tile(d, columns), atol=1e-5)  # looks honest
    x = rng.normal(size=(batch, columns))
    products = passive.multiply_add([crafted], columns_side_by_side(x), draw_masks(rng, batch * columns, True))
    read = active.decrypt_products(products)[: batch * columns].imag.reshape(columns, batch).T
    assert np.sqrt(np.mean((read - x) ** 2)) > 1000  # the imaginary masks drown it (unmasked: error 5e-7)
    with pytest.raises(ExchangeRefused, match="decoy checks"):
        _probe(active, passive, [crafted], columns, batch, rng)


# ----------------------------------------------------------------------------------------------
# Real processes: aggregator and the lab (passive) as `cipherfed` processes; the hospital attacks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    c = LocalConsortium(tmp_path_factory.mktemp("adv-vertical"), list(PARTIES))
    c.provision(he_keys=False)
    data = write_party_data(c)
    c.write_aggregator_config()
    c.start_aggregator()
    c.write_node_config("lab", keys='scope = "consortium"')
    c.start_node("lab")
    c.write_node_config("hospital", keys='scope = "consortium"')  # not started: the test plays it
    c.write_admin_config()
    yield c, data
    c.stop_all()


def _two_party_spec(name: str, data: dict) -> str:
    columns = {p: data["columns"][p] for p in ("hospital", "lab")}
    return (
        vertical_job_toml(name, "vertical", columns, epochs=1)
        .replace('participants = ["hospital", "lab", "imaging"]', 'participants = ["hospital", "lab"]')
        .replace('passive = ["lab", "imaging"]', 'passive = ["lab"]')
    )


class Attacker:
    """The hospital as a malicious active party: the real ActiveParty for keys and alignment."""

    def __init__(self, c, data, name):
        spec_text = _two_party_spec(name, data)
        self.c, self.spec = c, parse_job_spec(spec_text)
        self.job_id = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec_text), timeout=30).job_id
        self.client = AggregatorClient(f"127.0.0.1:{c.port}", c.tls("hospital"), "localhost")
        self.relay = Relay(self.client, self.job_id, lambda: False, timeout_s=60)
        node = c.nodes["hospital"]
        own = load_columns(node.data, self.spec.vertical.features["hospital"], "diagnosis", "patient_id")
        directory = node.dir / "state" / "jobs" / self.job_id
        directory.mkdir(parents=True, exist_ok=True)
        self.party = ActiveParty(
            self.job_id,
            self.spec,
            "hospital",
            own,
            self.relay,
            self.client,
            LogSink("attacker"),
            directory,
            party_credentials(c, "hospital"),  # the hospital is a real party: it endorses its job key
        )
        self.codec = self.party._keys()
        rows = self.party._align()["hospital"]
        self.columns = self.party.passive_columns["lab"]
        x = own.features[rows]
        self.x = (x - x.mean(axis=0)) / x.std(axis=0)
        self.y = own.labels[rows].astype(float)
        train, _ = train_positions(len(rows), self.spec.seed)
        self.idx = batches(train, self.spec.batch_size, self.spec.seed, 0)[0]
        # what the attacker wants: the lab's standardised features of this batch (the lab standardises
        # over the aligned entities; the test knows the raw data)
        original = [int(normalize_id(own.ids[r]).split("-")[1]) for r in rows]
        lab = data["x"][original][:, list(LAB)]
        self.truth = ((lab - lab.mean(axis=0)) / lab.std(axis=0))[self.idx]

    def residual(self) -> np.ndarray:
        u = self.codec.decrypt(self.relay.receive(AGGREGATOR, "U", 1)[1])[: len(self.idx)]
        return 1 / (1 + np.exp(-u)) - self.y[self.idx]  # weights start at zero

    def send_residual(self, d: np.ndarray, imaginary: float = 0.0) -> int:
        if imaginary:
            sent = [craft_complex_residual(self.codec.context, tile(d, self.columns) + 1j * imaginary)]
        else:
            sent = self.codec.encrypt(tile(d, self.columns))
        self.relay.send("lab", "d", 1, sent)
        return len(sent)

    def receive_first(self, kinds: tuple[str, ...], timeout: float) -> tuple[str | None, list[bytes]]:
        """Whichever of these kinds the lab sends first (an undefended lab skips the probe)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for kind in kinds:
                request = pb.ReceiveRequest(job_id=self.job_id, kind=kind, seq=1, sender="lab", wait_ms=300)
                replies = list(self.client.stub.Receive(request, timeout=30))
                if replies:
                    return kind, [bytes(r.payload) for r in replies]
        return None, []

    def answer_probe(self, parts: list[bytes], chunks: int) -> list[np.ndarray]:
        """Decrypt the decoy products and return the masked totals, as an honest party would."""
        n = self.columns * len(self.idx)
        probes = [self.codec.decrypt_products(parts[k : k + chunks])[:n] for k in range(0, len(parts), chunks)]
        totals = np.asarray([p.sum() for p in probes])
        self.relay.send("lab", "m", 1, [np.r_[totals.real, totals.imag].astype("<f8").tobytes()])
        return probes

    def recover(self, decrypted: np.ndarray, d: np.ndarray, attack: str) -> np.ndarray:
        """Read features out of masked per-slot products: (d_i + i) x_ij + r_ij has x_ij as its
        imaginary part; s d_i x_ij + r_ij gives x_ij after dividing by the known s d_i."""
        n, b = self.columns * len(self.idx), len(self.idx)
        if attack == "imaginary":
            return decrypted[:n].imag.reshape(self.columns, b).T
        return (decrypted[:n].real.reshape(self.columns, b) / d).T

    def status(self, timeout: float = 60) -> pb.JobStatus:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=self.job_id), timeout=10)
            if status.status != "running":
                return status
            time.sleep(0.2)
        return status

    def end(self) -> None:
        if self.status(0.1).status == "running":
            self.client.stub.FinishJob(
                pb.FinishJobRequest(job_id=self.job_id, ok=False, reason="test over"), timeout=30
            )


def _lab_audit(c, job_id):
    lines = (c.nodes["lab"].dir / "state" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("job") == job_id]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["scale", "imaginary"])
def test_an_unmasking_active_party_is_refused_before_any_feature_product_and_learns_nothing(world, attack):
    """scale: residuals x 1e5 (the reproduced attack); imaginary: honest real parts, imaginary parts 1."""
    c, data = world
    attacker = Attacker(c, data, attack)
    try:
        d = attacker.residual()
        if attack == "scale":
            d = SCALE * d
        chunks = attacker.send_residual(d, imaginary=1.0 if attack == "imaginary" else 0.0)
        kind, parts = attacker.receive_first(("decoy", "g"), timeout=60)
        if kind == "g":  # an undefended passive: the feature products come straight back
            read = attacker.recover(attacker.codec.decrypt_products(parts), d, attack)
            error = np.abs(read - attacker.truth).max()
            pytest.fail(
                f"the lab sent feature products for a {attack} residual; features read with max error {error:.2g}"
            )
        assert kind == "decoy", "the lab sent nothing after the residual"
        probes = attacker.answer_probe(parts, chunks)
        late, late_parts = attacker.receive_first(("g",), timeout=5)
        if late:  # the probe passed: the feature products follow
            read = attacker.recover(attacker.codec.decrypt_products(late_parts), d, attack)
            error = np.abs(read - attacker.truth).max()
            pytest.fail(f"the lab sent feature products after the probe; features read with max error {error:.2g}")
        status = attacker.status()
    finally:
        attacker.end()
    assert status.status == "failed" and "lab:" in status.reason and "decoy checks" in status.reason, status.reason
    # the best the attacker can do with what it holds (decoy products) is no better than guessing
    guess = np.sqrt(np.mean(attacker.truth**2))  # predicting the mean of standardised features
    for decrypted in probes:
        error = np.sqrt(np.mean((attacker.recover(decrypted, d, attack) - attacker.truth) ** 2))
        assert error >= 0.95 * guess, (error, guess)
    records = _lab_audit(c, attacker.job_id)
    refused = [r for r in records if r["event"] == "vertical_exchange_refused"]
    assert len(refused) == 1 and refused[0]["details"]["check"] == "probe" and refused[0]["details"]["step"] == 1
    sent = {r["details"]["kind"] for r in records if r["event"] == "data_sent"}
    assert "decoy" in sent and "g" not in sent


@pytest.mark.slow
def test_a_lying_masked_sum_reply_is_refused_and_not_applied(world):
    c, data = world
    attacker = Attacker(c, data, "lie")
    try:
        d = attacker.residual()  # honest residual: the probe passes
        chunks = attacker.send_residual(d)
        kind, parts = attacker.receive_first(("decoy", "g"), timeout=60)
        if kind == "decoy":
            attacker.answer_probe(parts, chunks)
            kind, parts = attacker.receive_first(("g",), timeout=60)
        assert kind == "g", "an honest residual's probe should pass"
        sums = segment_sums(attacker.codec.decrypt(parts), attacker.columns, len(attacker.idx))
        sums[2] += 50.0 * len(attacker.idx)  # steer the lab's weight 2: beyond any |d| <= 1
        attacker.relay.send("lab", "m", 1, [sums.astype("<f8").tobytes()])
        status = attacker.status(timeout=30)
    finally:
        attacker.end()
    assert status.status == "failed" and "gradient beyond any residual" in status.reason, status.reason
    assert not (c.nodes["lab"].dir / "state" / "jobs" / attacker.job_id / "vertical_model.npz").exists()
    refused = [r for r in _lab_audit(c, attacker.job_id) if r["event"] == "vertical_exchange_refused"]
    assert [r["details"]["check"] for r in refused] == ["gradient"]


# ----------------------------------------------------------------------------------------------
# A malicious passive party (reviewer's findings 3 and 5): decoys chosen to read labels, and an active
# party's alignment that names too few, repeated or out-of-range entities. Unit-level: the real
# ActiveParty / PassiveParty code and real CKKS, the other side scripted through a stand-in relay.

_SPEC = (
    'name = "v"\npartition = "vertical"\nrounds = 1\nhe_profile = "vertical"\nparticipants = ["act", "pas"]\n'
    '[dataset]\nlabel = "label"\nid = "pid"\n[vertical]\nactive = "act"\npassive = ["pas"]\nmin_entities = 10\n'
    '[vertical.features]\nact = ["x1"]\npas = ["x2"]\n'
)


class _Recorded:
    """An event sink that keeps what it is told, so a test can read the audit records."""

    head = ""

    def __init__(self):
        self.records = []

    def record(self, event, actor, *, job=None, round=None, **details):
        self.records.append({"event": event, "actor": actor, "job": job, "details": details})

    def refused(self):
        return [r["details"] for r in self.records if r["event"] == "vertical_exchange_refused"]


class _ScriptedRelay:
    """What the other party sends, by kind; what this party sends back is kept."""

    timeout_s = 5

    def __init__(self, inbox):
        self.inbox, self.sent = inbox, []

    def receive(self, sender, kind, seq):
        return seq, self.inbox[str(kind)]

    def send(self, to, kind, seq, payloads):
        self.sent.append((str(kind), payloads))

    def receive_blob(self, sender, kind, seq):
        return b"".join(self.inbox[str(kind)])

    def send_blob(self, to, kind, seq, data):
        self.sent.append((str(kind), [data]))

    def receive_json(self, sender, kind, seq=0):
        return json.loads(self.receive_blob(sender, kind, seq))

    def should_stop(self):
        return False


def _party(cls, name, relay, events, tmp_path, n=50):
    from silo_node.data import LocalData

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n) if cls is ActiveParty else None
    data = LocalData(rng.normal(size=(n, 1)), labels, [f"id{i}" for i in range(n)], ["x"], "fp")
    return cls("v-1", parse_job_spec(_SPEC), name, data, relay, None, events, tmp_path)


def _labels_batch(codecs, batch=32):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, batch).astype(float)
    d = rng.uniform(0.05, 0.95, batch) - y
    active, passive = codecs
    sent = active.encrypt(tile(d, 1))
    return y, d, sent, passive.load_residual(sent, batch)


def test_a_passive_asking_for_more_decoys_than_probes_is_refused_before_any_total(codecs, tmp_path):
    """The reviewer's x6: 32 indicator 'decoys' for a batch of 32 read every label; now only exactly PROBES."""
    from silo_node.vertical_guard import PROBES

    active, passive = codecs
    y, d, sent, residual = _labels_batch(codecs)
    rng = np.random.default_rng(9)
    for count in (len(d), PROBES + 1, PROBES - 1):
        decoys = np.eye(len(d))[:count]
        masks = np.stack([draw_masks(rng, len(d), True) for _ in decoys])
        parts = [ch for c, m in zip(decoys, masks) for ch in passive.products(residual, c, m)]
        relay, events = _ScriptedRelay({"decoy": parts, "commit": [b"\0" * 32]}), _Recorded()
        party = _party(ActiveParty, "act", relay, events, tmp_path)
        with pytest.raises(VerticalError, match=f"exactly {PROBES} decoys"):
            party._answer_probe(active, "pas", 1, len(sent), len(d))
        assert relay.sent == [], f"{count} decoys: the active party answered"
        assert [(r["check"], r["sender"], r["step"]) for r in events.refused()] == [("probe count", "pas", 1)]


def _indicator_probe(codecs, tmp_path, reveal):
    """A passive commits to a seed but sends PROBES indicator decoys (8 exact labels), then reveals ``reveal``."""
    from silo_node.vertical_guard import PROBES, probe_commitment, probe_context

    active, passive = codecs
    y, d, sent, residual = _labels_batch(codecs)
    seed = bytes(range(32))
    decoys = np.eye(len(d))[:PROBES]
    masks = np.stack([draw_masks(np.random.default_rng(3), len(d), True) for _ in decoys])
    parts = [ch for c, m in zip(decoys, masks) for ch in passive.products(residual, c, m)]
    commitment = probe_commitment(seed, probe_context("v-1", "pas", 1, 1, len(d)))
    relay = _ScriptedRelay({"decoy": parts, "commit": [commitment], "seed": [reveal(seed)]})
    events = _Recorded()
    party = _party(ActiveParty, "act", relay, events, tmp_path)
    answered = party._answer_probe(active, "pas", 1, len(sent), len(d))
    totals = np.frombuffer(relay.sent[0][1][0], dtype="<f8")[:PROBES] - masks.real.sum(axis=1)
    assert ((totals < 0) == (y[:PROBES] > 0.5)).all()  # what the cheat reads in this one batch: PROBES labels
    with pytest.raises(VerticalError, match="probe seed"):
        party._check_probe_seed(active, "pas", 1, answered, tile(d, 1), 1)
    return events.refused()


def test_indicator_decoys_are_caught_when_the_committed_seed_is_revealed(codecs, tmp_path):
    refused = _indicator_probe(codecs, tmp_path, lambda seed: seed)
    assert len(refused) == 1 and refused[0]["check"] == "probe seed" and "differ" in refused[0]["reason"]


def test_a_revealed_seed_that_does_not_open_the_commitment_is_caught(codecs, tmp_path):
    refused = _indicator_probe(codecs, tmp_path, lambda seed: bytes(reversed(seed)))
    assert len(refused) == 1 and "does not open the commitment" in refused[0]["reason"]


def test_an_honest_committed_probe_passes_both_sides_through_ckks(codecs, tmp_path):
    """No false alarm: the passive's real probe, answered by the real active code, checked after the reveal."""
    from silo_node.vertical_guard import derive_probe, probe_commitment, probe_context

    active, passive = codecs
    for columns, batch in ((1, 32), (10, 32), (3, 7)):
        d = np.random.default_rng(columns).uniform(-1, 1, batch)
        sent = active.encrypt(tile(d, columns))
        residual = passive.load_residual(sent, columns * batch)
        seed = np.random.default_rng(batch).bytes(32)
        decoys, masks = derive_probe(seed, columns, batch, True)
        assert abs(decoys.mean()) < 0.15 and abs(decoys.std() - 1) < 0.1  # N(0, 1): the bound's premise
        assert np.abs(masks.real).max() <= MASK_BOUND and np.abs(masks.imag).max() <= MASK_BOUND
        parts = [ch for c, m in zip(decoys, masks) for ch in passive.products(residual, c, m)]
        commitment = probe_commitment(seed, probe_context("v-1", "pas", 4, columns, batch))
        relay = _ScriptedRelay({"decoy": parts, "commit": [commitment], "seed": [seed]})
        events = _Recorded()
        party = _party(ActiveParty, "act", relay, events, tmp_path)
        answered = party._answer_probe(active, "pas", 4, len(sent), columns * batch)
        reply = np.frombuffer(relay.sent[0][1][0], dtype="<f8")
        check_probe(reply[:8] + 1j * reply[8:], masks, decoys, columns, batch)  # the passive's side passes
        party._check_probe_seed(active, "pas", 4, answered, tile(d, columns), columns)
        assert events.refused() == []


@pytest.mark.parametrize(
    ("positions", "reason"),
    [
        ([3, 3], "repeated"),
        (list(range(9)) + [3], "repeated"),
        ([-1, *range(1, 12)], r"\[0, 40\)"),
        ([40, *range(11)], r"\[0, 40\)"),
        (list(range(9)), "at least 10"),
        ([1.5, *range(11)], "list of integers"),
    ],
    ids=["one-entity-twice", "duplicate", "negative", "past-the-end", "too-few", "not-integers"],
)
def test_a_passive_refuses_an_alignment_with_repeated_out_of_range_or_too_few_positions(positions, reason, tmp_path):
    """The reviewer's x5: positions [3, 3] for min_entities = 10 were accepted; negative ones wrapped."""
    from silo_node.vertical import PassiveParty

    inbox = {"psi-a": [b"\x01" * 32 * 40], "align": [json.dumps({"positions": positions}).encode()]}
    relay, events = _ScriptedRelay(inbox), _Recorded()
    party = _party(PassiveParty, "pas", relay, events, tmp_path, n=40)
    with pytest.raises(VerticalError, match="refused the active party's alignment"):
        party._align()
    refused = events.refused()
    assert len(refused) == 1 and refused[0]["check"] == "alignment", events.records
    assert re.search(reason, refused[0]["reason"]), refused[0]["reason"]
    assert not [r for r in events.records if r["event"] == "entities_aligned"]


def test_a_passive_accepts_a_valid_alignment(tmp_path):
    from silo_node.vertical import PassiveParty

    inbox = {"psi-a": [b"\x01" * 32 * 40], "align": [json.dumps({"positions": [7, 0, 39, *range(10, 17)]}).encode()]}
    relay, events = _ScriptedRelay(inbox), _Recorded()
    party = _party(PassiveParty, "pas", relay, events, tmp_path, n=40)
    rows = party._align()
    assert len(set(rows.tolist())) == 10 and events.refused() == []


@pytest.mark.parametrize("declared", [2, 0, "1", True, None])
def test_a_passive_declaring_other_columns_than_the_spec_gives_it_is_refused(declared, tmp_path):
    """More columns than the coordinator approved mean more per-column gradient sums of the residual
    (the labels' signal) to the passive; the active party holds the passive to the job spec's count."""
    relay, events = _ScriptedRelay({}), _Recorded()
    party = _party(ActiveParty, "act", relay, events, tmp_path)
    expected = len(party.vertical.features["pas"])
    assert party._declared_columns("pas", {"features": expected}) == expected
    with pytest.raises(VerticalError, match="feature count"):
        party._declared_columns("pas", {"features": declared})
    refused = events.refused()
    assert len(refused) == 1 and refused[0]["check"] == "feature count", events.records


# ---------------------------------------------------------------------------------------------- the summed parts


def _records(c: LocalConsortium, event: str) -> list[dict]:
    lines = (c.agg_dir / "state" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _send_part(client: AggregatorClient, job_id: str, seq: int, payload: bytes) -> None:
    message = pb.RelayMessage(job_id=job_id, to=AGGREGATOR, kind="u", seq=seq, payload=payload, last=True)
    client.stub.Send(iter([message]), timeout=30)


@pytest.mark.slow
def test_a_partial_score_before_the_key_or_malformed_is_refused_to_its_sender(world):
    """A passive's "u" before the active party's key is FAILED_PRECONDITION (send again later), not UNKNOWN;
    a malformed "u" is INVALID_ARGUMENT to the passive that sent it, audited, and never stored for the
    aggregator to trip over when an honest passive's part completes the step."""
    c, data = world
    spec_text = vertical_job_toml("parts", "vertical", {p: data["columns"][p] for p in PARTIES}, epochs=1)
    spec = parse_job_spec(spec_text)
    job_id = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec_text), timeout=30).job_id
    imaging = AggregatorClient(f"127.0.0.1:{c.port}", c.tls("imaging"), "localhost")

    with pytest.raises(grpc.RpcError) as early:
        _send_part(imaging, job_id, 7, b"\x00" * 64)
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION, early.value.details()
    assert "has not published its key" in early.value.details()

    hospital = AggregatorClient(f"127.0.0.1:{c.port}", c.tls("hospital"), "localhost")
    directory = c.nodes["hospital"].dir / "state" / "jobs" / job_id
    directory.mkdir(parents=True, exist_ok=True)
    own = load_columns(c.nodes["hospital"].data, spec.vertical.features["hospital"], "diagnosis", "patient_id")
    party = ActiveParty(
        job_id,
        spec,
        "hospital",
        own,
        Relay(hospital, job_id, lambda: False, timeout_s=60),
        hospital,
        LogSink("attacker"),
        directory,
        party_credentials(c, "hospital"),
    )
    unsafe = pb.KeyMaterial(scope=job_id, fingerprint="0" * 64, public_context=b"x", wrapped={"../lab": b"blob"})
    with pytest.raises(grpc.RpcError) as named:  # a member name in wrapped is a safe identifier, or refused
        hospital.stub.PutKeyMaterial(unsafe, timeout=30)
    assert named.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "wrapped:" in named.value.details()
    codec = party._keys()  # the active party publishes its (endorsed) key

    for malformed in (b"not a ciphertext", codec.encrypt(np.zeros(3))[0][:-40]):
        with pytest.raises(grpc.RpcError) as bad:
            _send_part(imaging, job_id, 7, malformed)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad.value.details()
        assert "'u' part of step 7 is malformed" in bad.value.details()
    refused = [r for r in _records(c, "rpc_refused") if r["actor"] == "imaging" and r["details"]["method"] == "Send"]
    assert [r["details"]["code"] for r in refused] == ["FAILED_PRECONDITION", "INVALID_ARGUMENT", "INVALID_ARGUMENT"]

    _send_part(imaging, job_id, 7, codec.encrypt(np.ones(3))[0])  # a well-formed part is still accepted
