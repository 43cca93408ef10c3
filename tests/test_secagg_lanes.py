"""Secure aggregation over compact lanes (crypto/compact_masked.py): masked uploads, exact unmasked sums.

Real compact CKKS keys and ciphertexts, real SecAgg masks, shares and unmasking from
crypto.secagg.simulation (certificates from an in-memory CA); the test plays the aggregator
(Accumulator sum, secrets revealed) and the silos (correction expanded, added after decryption).
No processes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal.sealapi as seal
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from crypto.compact import CompactEncryptor, CompactParams, centered_correction, mask_length, mask_length_for
from crypto.engine import accumulate_batches
from crypto.errors import CiphertextError, ManifestError, ValueRangeError
from crypto.keys import generate_key_set, load_public_context
from crypto.lanes import center, masked_layout, max_masked_bits_for, unmasked_lane_sums, unpack_lanes
from crypto.packing import chunk_digest, pack
from crypto.quantize import UniformStream, quantize
from crypto.seal_io import load_ciphertext, save_bytes
from crypto.seal_reals import SeededRealCodec
from crypto.secagg import RoundContext
from crypto.secagg.simulation import Member, SimRound, agree_round, finish_round, make_members, silo_mask

CTX = RoundContext("consortium-a", "job-7", 3)
ALPHA = 1e-4  # significance level of the uniformity check
WEIGHTS = (120, 40_000, 70_707, 999_999)  # above 2^bits: both weight digits in use
CAP = 1_000_000
SIZE = 20_000  # values per silo: two chunks of 8190 real pairs


@pytest.fixture(scope="module")
def keys():
    return generate_key_set("compact")


@pytest.fixture(scope="module")
def public(keys):
    return load_public_context(keys.export_public())


@pytest.fixture(scope="module")
def members() -> list[Member]:
    return make_members(4)


@pytest.fixture(scope="module")
def aggregator() -> Member:
    return make_members(1, "aggregator")[0]


def _params(max_silos: int = 4) -> CompactParams:
    return CompactParams(max_masked_bits_for(max_silos), 0.5, max_silos, CAP, secure_aggregation=True)


def _updates(members: list[Member]) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(11)
    return {m.fingerprint: {"w": rng.normal(0, 0.1, SIZE - 100), "b": rng.normal(0, 0.1, 100)} for m in members}


def _seed(i: int) -> bytes:
    return bytes([i + 1]) * 32


def _expected(params: CompactParams, tensors: dict[str, np.ndarray], weight: int, seed: bytes) -> np.ndarray:
    """The silo's quantized values, computed without masking or encryption."""
    vector, _ = pack(tensors)
    return quantize(vector, params.bound, params.bits, UniformStream(seed), factor=weight / params.weight_cap).values


def _masked_round(keys, params, members, uploaders, tags=None):
    """Agree on masks, then each uploader encrypts its masked update; returns (sim, batches, expected sum)."""
    sim = agree_round(members, CTX, params.mask_bits, threshold=2)
    enc = CompactEncryptor(keys, params)
    updates = _updates(members)
    batches, expected = [], np.zeros(SIZE, dtype=np.int64)
    for i, m in enumerate(members):
        if m.fingerprint not in uploaders:
            continue
        fp = m.fingerprint
        batches.append(enc.encrypt_update(updates[fp], WEIGHTS[i], _seed(i), tags=tags, mask=silo_mask(sim, fp)))
        expected += _expected(params, updates[fp], WEIGHTS[i], _seed(i))
    return sim, batches, expected


def _aggregate(public, keys, params, sim: SimRound, aggregator, batches):
    """Sum the masked ciphertexts and unmask; returns the (still masked) chunks and the silos' correction."""
    manifest = batches[0].manifest
    acc = accumulate_batches(public, keys.fingerprint, batches)
    _, result = finish_round(sim, aggregator, mask_length_for(params, manifest))
    return manifest, acc.serialize(), result.correction


@pytest.mark.parametrize("dropped", [0, 1], ids=["all-upload", "one-dropped-after-shares"])
def test_masked_round_decrypts_to_exact_sum(keys, public, members, aggregator, dropped):
    params = _params()
    uploaders = {m.fingerprint for m in members[dropped:]}
    sim, batches, expected = _masked_round(keys, params, members, uploaders)
    manifest, chunks, correction = _aggregate(public, keys, params, sim, aggregator, batches)
    sums = CompactEncryptor(keys, params).decrypt_lane_sums(manifest, chunks, correction)
    assert sums.contributors == len(uploaders)
    assert sums.total_weight == sum(WEIGHTS[dropped:])
    np.testing.assert_array_equal(sums.values, expected)
    mean = CompactEncryptor(keys, params).decrypt_mean(manifest, chunks, correction)
    assert mean.tensors["w"].shape == (SIZE - 100,)


def test_masked_round_with_contributor_tags(keys, public, members, aggregator):
    """Tags stay unmasked after the lanes; mask_length_for leaves them out of the mask vector."""
    params = _params()
    tags = np.arange(1.0, 5.0)
    sim, batches, expected = _masked_round(keys, params, members, {m.fingerprint for m in members}, tags)
    manifest = batches[0].manifest
    assert mask_length_for(params, manifest) == SIZE + 2 * manifest.chunk_count
    manifest, chunks, correction = _aggregate(public, keys, params, sim, aggregator, batches)
    sums = CompactEncryptor(keys, params).decrypt_lane_sums(manifest, chunks, correction)
    np.testing.assert_array_equal(sums.values, expected)
    np.testing.assert_allclose(sums.tags, 4 * tags, atol=1e-3)
    assert sums.total_weight == sum(WEIGHTS)


def test_one_masked_upload_does_not_decode_for_a_key_holder(keys, members):
    """A colluding silo decrypting one upload alone reads residues uniform mod 2^w, unrelated to the update."""
    params = _params()
    sim, batches, _ = _masked_round(keys, params, members, {members[0].fingerprint})
    batch = batches[0]
    with pytest.raises(CiphertextError):  # its weight headers are one-time padded: implausible and disagreeing
        CompactEncryptor(keys, params).decrypt_lane_sums(batch.manifest, batch.chunks)
    reals = (
        np.rint(SeededRealCodec(keys).decrypt(batch.chunks)).astype(np.int64).reshape(batch.manifest.chunk_count, -1)
    )
    data = reals[:, 2:].ravel()
    lanes = unpack_lanes(data, params.packing, SIZE, 1)
    w = params.mask_bits
    residues = lanes & np.int64((1 << w) - 1)
    true = _expected(params, _updates(members)[members[0].fingerprint], WEIGHTS[0], _seed(0))
    assert np.count_nonzero(center(residues, w) == true) < 10  # ~SIZE / 2^w by chance
    counts = np.bincount(residues >> (w - 4), minlength=16)  # top 4 bits: 16 equiprobable bins
    assert chisquare(counts).pvalue > ALPHA


def test_missing_or_wrong_correction_is_refused(keys, public, aggregator):
    """With room for more silos than contributed, un-removed masks fail the lane range check."""
    members = make_members(4)
    params = _params(max_silos=8)
    sim, batches, _ = _masked_round(keys, params, members, {m.fingerprint for m in members})
    manifest, chunks, correction = _aggregate(public, keys, params, sim, aggregator, batches)
    enc = CompactEncryptor(keys, params)
    with pytest.raises(CiphertextError, match="masked .* without the secrets that remove the masks"):
        enc.decrypt_lane_sums(manifest, chunks)
    zero = np.zeros_like(correction)  # a correction that removes nothing: the residues stay uniform
    with pytest.raises(CiphertextError, match="masks were not removed|total weight|headers disagree"):
        enc.decrypt_lane_sums(manifest, chunks, zero)
    wrong = correction.copy()  # right weight corrections, random lane corrections (e.g. another round's)
    lanes = wrong.shape[0] - 2 * manifest.chunk_count
    wrong[:lanes] = np.random.default_rng(5).integers(0, 1 << params.mask_bits, lanes, dtype=np.uint64)
    with pytest.raises(CiphertextError, match="masks were not removed"):
        enc.decrypt_lane_sums(manifest, chunks, wrong)


def test_wrong_correction_with_a_full_consortium_gives_wrong_values(keys, public, members, aggregator):
    """Why the silo expands the correction itself, from secrets checked against their commitments: when
    contributors == max_silos every residue is a plausible sum, so a shifted correction would decrypt to
    shifted values without an error. (tests/test_secagg.py: a revealed secret that is not the committed one
    is refused.)"""
    params = _params()
    sim, batches, expected = _masked_round(keys, params, members, {m.fingerprint for m in members})
    manifest, chunks, correction = _aggregate(public, keys, params, sim, aggregator, batches)
    shifted = correction.copy()
    shifted[:10] = (shifted[:10] + np.uint64(3)) & np.uint64((1 << params.mask_bits) - 1)
    sums = CompactEncryptor(keys, params).decrypt_lane_sums(manifest, chunks, shifted)
    np.testing.assert_array_equal(sums.values[:10], expected[:10] + 3)
    np.testing.assert_array_equal(sums.values[10:], expected[10:])


# ---- refusals --------------------------------------------------------------------------------------


def test_params_refusals():
    with pytest.raises(ValueRangeError, match="lower weight_cap to at most 16383"):
        CompactParams(7, 0.5, 64, 20_000, secure_aggregation=True)  # two 7-bit digits: below 2^14
    CompactParams(7, 0.5, 64, 16_383, secure_aggregation=True)
    with pytest.raises(ValueRangeError, match="lower weight_cap to at most 1073741823"):
        CompactParams(15, 0.5, 4, 1 << 30, secure_aggregation=True)
    with pytest.raises(ValueRangeError, match="lower bits to at most 15"):
        CompactParams(16, 0.5, 4, 100, secure_aggregation=True)
    with pytest.raises(ValueRangeError, match="lower bits to at most 7"):
        masked_layout(8, 64)
    with pytest.raises(ValueRangeError, match="secure_aggregation must be true or false"):
        CompactParams(12, 0.5, 4, 100, secure_aggregation=1)  # type: ignore[arg-type]


def test_describe_adds_mask_fields_only_when_on():
    off, on = CompactParams(12, 0.5, 4, 100), CompactParams(12, 0.5, 4, 100, secure_aggregation=True)
    assert "secure_aggregation" not in off.describe() and "mask_bits" not in off.describe()
    assert '"mask_bits":14' in on.describe() and '"secure_aggregation":true' in on.describe()
    assert '"unmasking":"silos"' in on.describe() and "unmasking" not in off.describe()  # who removes the masks


def test_mask_and_secure_aggregation_go_together(keys):
    update = {"v": np.zeros(100)}
    with pytest.raises(ValueRangeError, match="secure_aggregation off"):
        CompactEncryptor(keys, CompactParams(12, 0.5, 4, 100)).encrypt_update(update, 5, mask=lambda v: v)
    with pytest.raises(ValueRangeError, match="needs the round's `mask`"):
        CompactEncryptor(keys, _params()).encrypt_update(update, 5)


@pytest.mark.parametrize(
    "bad",
    [
        lambda v: v[:-1],  # too short
        lambda v: v.astype(np.int64),  # wrong type
        lambda v: v | np.uint64(1 << 17),  # beyond 2^w
    ],
    ids=["short", "int64", "out-of-range"],
)
def test_a_bad_mask_result_is_refused(keys, bad):
    with pytest.raises(ValueRangeError, match="masked vector returned by `mask`"):
        CompactEncryptor(keys, _params()).encrypt_update({"v": np.zeros(100)}, 5, mask=bad)


def test_mask_length_counts_lanes_and_chunks_not_tags():
    params = _params()
    assert mask_length(params, 20_004, 2, tag_count=4) == 20_004  # 20,000 lanes + 2 weight digits per chunk
    with pytest.raises(ValueRangeError, match="secure_aggregation off"):
        mask_length(CompactParams(12, 0.5, 4, 100), 10, 1)
    with pytest.raises(ValueRangeError, match="no lane value"):
        mask_length(params, 4, 1, tag_count=4)


def test_correction_is_validated(keys, public, members):
    params = _params()
    batch = CompactEncryptor(keys, params).encrypt_update({"v": np.zeros(100)}, 5, mask=lambda v: v)
    manifest, n = batch.manifest, mask_length_for(params, batch.manifest)
    w = params.mask_bits
    for bad in (np.zeros(n, dtype=np.int64), np.zeros(n - 1, dtype=np.uint64), np.full(n, 1 << w, dtype=np.uint64)):
        with pytest.raises(ValueRangeError, match="secure-aggregation correction"):
            centered_correction(params, manifest, bad)
        with pytest.raises(ValueRangeError, match="secure-aggregation correction"):  # refused before decrypting
            CompactEncryptor(keys, params).decrypt_lane_sums(manifest, batch.chunks, bad)
    with pytest.raises(ManifestError, match="quantized as"):
        centered_correction(_params(8), manifest, np.zeros(n, dtype=np.uint64))
    residues = np.array([0, 1, (1 << (w - 1)) - 1, 1 << (w - 1), (1 << w) - 1] * (n // 5 + 1), dtype=np.uint64)[:n]
    centered = centered_correction(params, manifest, residues)
    assert centered.dtype == np.int64 and centered.shape == (n,)
    assert list(centered[:5]) == [0, 1, (1 << (w - 1)) - 1, -(1 << (w - 1)), -1]
    assert residues[3] == 1 << (w - 1)  # the caller's vector is left alone


@pytest.mark.parametrize("extreme", ["high", "low"])
def test_extreme_masked_values_wrap_and_reduce_exactly(keys, public, members, extreme):
    """Masks chosen so every centered masked value (lanes and weights) sits at the edge of [-2^(w-1), 2^(w-1)):
    the encrypted sums then lie multiples of 2^w away from the true sums (and at the lane limit
    (c + 1) * 2^(w-1)), so the silo must reduce both lanes and weights mod 2^w to read them."""
    params = _params()
    w = params.mask_bits
    modulus = np.uint64((1 << w) - 1)
    target = np.uint64((1 << (w - 1)) - 1 if extreme == "high" else 1 << (w - 1))  # centered: 2^(w-1)-1 or -2^(w-1)
    enc = CompactEncryptor(keys, params)
    updates, pads = _updates(members), []

    def edge(values: np.ndarray) -> np.ndarray:
        pads.append((target - values) & modulus)  # the one-time pad that lands every value on the edge
        return np.full_like(values, target)

    batches = [
        enc.encrypt_update(updates[m.fingerprint], WEIGHTS[i], _seed(i), mask=edge) for i, m in enumerate(members)
    ]
    expected = sum(_expected(params, updates[m.fingerprint], WEIGHTS[i], _seed(i)) for i, m in enumerate(members))
    correction = (np.uint64(0) - sum(pads, np.zeros_like(pads[0]))) & modulus
    manifest = batches[0].manifest
    acc = accumulate_batches(public, keys.fingerprint, batches)
    sums = enc.decrypt_lane_sums(manifest, acc.serialize(), correction)
    np.testing.assert_array_equal(sums.values, expected)
    assert sums.total_weight == sum(WEIGHTS)


def test_weight_digit_outside_the_honest_range_is_refused(keys, public, members, aggregator):
    """An aggregator that adds a multiple of 2^w to the high weight digit leaves the residue unchanged but produces
    a lane no honest round can: refused like any out-of-range lane rather than silently reduced away."""
    params = _params()
    sim, batches, _ = _masked_round(keys, params, members, {m.fingerprint for m in members})
    manifest, chunks, correction = _aggregate(public, keys, params, sim, aggregator, batches)
    # the test holds the key: read chunk 0's corrected high digit h, shift it by k * 2^w just beyond the limit
    w, lane_bits = params.mask_bits, params.packing.lane_bits
    header = int(np.rint(SeededRealCodec(keys).decrypt(chunks[:1])[1]))
    digits = centered_correction(params, manifest, correction)[-2 * manifest.chunk_count :]
    high = ((header - int(center(np.array([header]), lane_bits)[0])) >> lane_bits) + int(digits[1])  # corrected
    limit = params.packing.lane_limit(params.max_silos)
    k = (limit - high) // (1 << w) + 1  # smallest k with high + k * 2^w > limit (and still < 2^(39 - lane_bits))
    # the aggregator adds that plaintext to the encrypted sum: it needs only the public parameters
    context = public.seal_context
    total = load_ciphertext(context, chunks[0])
    slots = [complex(0.0, float(k << w) * float(1 << lane_bits))] + [0j] * (public.reals_per_ciphertext // 2 - 1)
    plain = seal.Plaintext()
    seal.CKKSEncoder(context).encode(slots, total.parms_id(), total.scale, plain)  # real 1 is slot 0's imaginary
    seal.Evaluator(context).add_plain_inplace(total, plain)
    tampered = [save_bytes(total), *chunks[1:]]
    manifest = dataclasses.replace(manifest, chunk_digests=(chunk_digest(tampered[0]), *manifest.chunk_digests[1:]))
    with pytest.raises(CiphertextError, match="weight digit is outside"):
        CompactEncryptor(keys, params).decrypt_lane_sums(manifest, tampered, correction)


def test_a_lane_shifted_by_a_multiple_of_the_mask_modulus_is_refused_after_correction():
    """Adding k * 2^w to a masked lane sum leaves its residue, and so the unmasked value, unchanged: the corrected
    lane is still bounded like any honest one (contributors masked values plus one correction), so an
    aggregator that adds such a plaintext is refused instead of reduced away. Honest lanes come back exactly."""
    layout = _params().packing
    w, contributors = layout.mask_bits, 3
    rng = np.random.default_rng(5)
    values = rng.integers(-layout.value_level, layout.value_level + 1, (contributors, 64))
    pads = rng.integers(0, 1 << w, (contributors, 64), dtype=np.uint64)
    masked = [center((v.astype(np.uint64) + p) & np.uint64((1 << w) - 1), w) for v, p in zip(values, pads, strict=True)]
    correction = center((np.uint64(0) - pads.sum(axis=0, dtype=np.uint64)) & np.uint64((1 << w) - 1), w)
    lanes = np.sum(masked, axis=0)
    sums = unmasked_lane_sums(lanes.copy(), layout, contributors, correction)
    np.testing.assert_array_equal(sums, values.sum(axis=0))
    limit = layout.lane_limit(contributors)
    shifted = lanes.copy()
    k = (limit - int(shifted[7] + correction[7])) // (1 << w) + 1  # just beyond the limit once corrected
    shifted[7] += k << w
    with pytest.raises(CiphertextError, match="corrected lane is outside"):
        unmasked_lane_sums(shifted, layout, contributors, correction)
    with pytest.raises(CiphertextError, match="same length"):
        unmasked_lane_sums(lanes.copy(), layout, contributors, correction[:-1])
    # the exact honest range: every term in [-2^(w-1), 2^(w-1) - 1], so (c + 1) * (2^(w-1) - 1) at the top
    bottom, top = layout.corrected_range(contributors)
    assert (bottom, top) == (-(contributors + 1) << (w - 1), (contributors + 1) * ((1 << (w - 1)) - 1))
    edge = lanes.copy()
    edge[9] = top - correction[9]  # all terms at 2^(w-1) - 1: reachable, and it reduces to -(c + 1)
    assert unmasked_lane_sums(edge.copy(), layout, contributors, correction)[9] == -(contributors + 1)
    edge[9] += 1
    with pytest.raises(CiphertextError, match="corrected lane is outside"):
        unmasked_lane_sums(edge, layout, contributors, correction)


@settings(max_examples=20, deadline=None)
@given(w=st.integers(1, 62), seed=st.integers(0, 2**32 - 1), unsigned=st.booleans())
def test_centering_in_place_writes_the_callers_vector_with_the_same_result(w, seed, unsigned):
    residues = np.random.default_rng(seed).integers(0, 1 << w, 257, dtype=np.uint64)
    if not unsigned:
        residues = residues.astype(np.int64)
    expected = center(residues, w)
    assert residues.max() < 1 << w  # the copying form left its argument alone
    out = center(residues, w, in_place=True)
    assert np.array_equal(out, expected) and out.dtype == np.int64
    assert np.shares_memory(out, residues)
