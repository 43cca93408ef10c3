"""Adversarial tests of the ``compact`` profile's crypto core: each attack must be refused.

The aggregator cannot see keys or lanes, so a contribution under another key, a sum of more
contributions than the lanes allow, or a mix of chunks from different sets of contributors reaches
the silo; the silo's decryption must refuse each of them instead of returning a wrong model.
"""

import numpy as np
import pytest

from crypto.compact import CompactEncryptor, CompactParams, default_bits
from crypto.engine import Accumulator, ChunkVerifier, accumulate_batches
from crypto.errors import CiphertextError, ValueRangeError
from crypto.keys import generate_key_set, load_public_context
from crypto.lanes import compact_layout, pack_lanes, to_integers, unpack_lanes
from crypto.packing import Manifest
from crypto.quantize import UniformStream, max_level, quantize
from crypto.seal_io import load_ciphertext


@pytest.fixture(scope="module")
def keys():
    return generate_key_set("compact")


@pytest.fixture(scope="module")
def public(keys):
    return load_public_context(keys.export_public())


def _params(max_silos=4):
    return CompactParams(default_bits(max_silos), 0.5, max_silos, 1000)


def _relabel(batch, fingerprint):
    """What a lying aggregator or silo can do: claim another key's fingerprint in the manifest."""
    m = batch.manifest
    batch.manifest = Manifest(
        m.profile,
        fingerprint,
        m.layout,
        m.value_count,
        m.values_per_chunk,
        m.scale_bits,
        m.chunk_digests,
        m.quantization,
    )
    return batch


def test_contribution_under_another_key_is_detected(keys, public):
    """A member (or the aggregator) encrypts under its own key: the sum decrypts to noise, refused."""
    rogue = generate_key_set("compact")
    values = np.random.default_rng(1).normal(0, 0.05, 3000)
    honest = CompactEncryptor(keys, _params())
    batches = [honest.encrypt_update({"v": values}, 300), honest.encrypt_update({"v": values}, 200)]
    foreign = _relabel(CompactEncryptor(rogue, _params()).encrypt_update({"v": values}, 100), keys.fingerprint)
    acc = accumulate_batches(public, keys.fingerprint, [*batches, foreign])  # SEAL loads it: same parameters
    with pytest.raises(CiphertextError, match="not exact integer sums"):
        honest.decrypt_mean(batches[0].manifest, acc.serialize())


def test_foreign_key_alone_is_detected_too(keys, public):
    rogue = generate_key_set("compact")
    foreign = _relabel(CompactEncryptor(rogue, _params()).encrypt_update({"v": np.zeros(10)}, 1), keys.fingerprint)
    with pytest.raises(CiphertextError, match="not exact integer sums"):
        CompactEncryptor(keys, _params()).decrypt_mean(foreign.manifest, foreign.chunks)


@pytest.mark.parametrize(("bits", "silos"), [(17, 16), (15, 64), (32, 2), (19, 8)])
def test_layout_that_could_carry_between_lanes_is_refused(bits, silos):
    with pytest.raises(ValueRangeError) as info:
        compact_layout(bits, silos)
    message = str(info.value)
    assert f"{bits}-bit values" in message and f"up to {silos} silos" in message
    assert "lower bits to at most" in message and "`sum` profile" in message


def test_job_params_refuse_an_overflowing_combination_and_a_huge_weight_cap():
    with pytest.raises(ValueRangeError, match="17-bit values summed over up to 16 silos"):
        CompactParams(17, 0.5, 16, 1000)
    with pytest.raises(ValueRangeError, match="weight_cap"):
        CompactParams(16, 0.5, 16, 2**40)
    with pytest.raises(ValueRangeError, match="max_silos"):
        CompactParams(8, 0.5, 65, 10)


def test_value_beyond_the_bound_is_clipped_and_counted_not_wrapped(keys, public):
    values = np.array([1e9, -1e9, 0.75, -0.5, 0.1])
    q = quantize(values, 0.5, 12, UniformStream(b"\x05" * 32))
    level = max_level(12)
    assert q.clipped == 3
    assert q.values[:4].tolist() == [level, -level, level, -level]
    enc = CompactEncryptor(keys, CompactParams(12, 0.5, 4, 10))
    batch = enc.encrypt_update({"v": values}, 10)
    assert batch.clipped == 3
    mean = enc.decrypt_mean(batch.manifest, accumulate_batches(public, keys.fingerprint, [batch]).serialize())
    assert mean.tensors["v"][:4].tolist() == pytest.approx([0.5, -0.5, 0.5, -0.5], abs=1e-12)


def test_nan_and_infinite_values_are_refused(keys):
    enc = CompactEncryptor(keys, _params())
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueRangeError, match="NaN or infinite"):
            enc.encrypt_update({"v": np.array([0.1, bad])}, 10)


def test_non_integer_weight_is_refused(keys):
    with pytest.raises(ValueRangeError, match="whole number"):
        CompactEncryptor(keys, _params()).encrypt_update({"v": np.zeros(3)}, 2.5)


def test_more_contributions_than_the_lanes_allow_are_refused(keys, public):
    """The aggregator replays an upload beyond max_silos: lanes could carry, so the sum is refused."""
    enc = CompactEncryptor(keys, _params(max_silos=4))
    batch = enc.encrypt_update({"v": np.full(20, 0.05)}, 1000)  # small: reals stay in range, lanes do not
    acc = accumulate_batches(public, keys.fingerprint, [batch] * 5)
    with pytest.raises(CiphertextError, match="decrypts to 5 contributions; this job allows 1..4"):
        enc.decrypt_mean(batch.manifest, acc.serialize())


def test_sum_beyond_the_exact_range_is_refused(keys, public):
    """Five full-scale uploads in a four-silo job push the reals past 2^39: refused, not rounded wrongly."""
    enc = CompactEncryptor(keys, _params(max_silos=4))
    batch = enc.encrypt_update({"v": np.full(20, 0.5)}, 1000)
    acc = accumulate_batches(public, keys.fingerprint, [batch] * 5)
    with pytest.raises(CiphertextError, match="not exact integer sums"):
        enc.decrypt_mean(batch.manifest, acc.serialize())


def test_chunks_summing_different_contributors_are_refused(keys, public):
    """The aggregator drops one silo's second chunk only: the per-chunk headers disagree."""
    enc = CompactEncryptor(keys, _params())
    values = np.zeros(enc.values_per_chunk + 10)
    a, b = enc.encrypt_update({"v": values}, 10), enc.encrypt_update({"v": values}, 20)
    acc = Accumulator(public, 2)
    for index, chunk in enumerate(a.chunks):
        acc.add(index, load_ciphertext(public.seal_context, chunk))
    acc.add(0, ChunkVerifier(public, b.manifest, keys.fingerprint).load(0, b.chunks[0]))
    with pytest.raises(CiphertextError, match="headers disagree"):
        enc.decrypt_mean(a.manifest, acc.serialize())


def test_aggregate_under_a_different_lane_layout_is_refused(keys, public):
    """A manifest claiming another packing must not be decoded with this job's lanes."""
    batch = CompactEncryptor(keys, CompactParams(8, 0.5, 4, 10)).encrypt_update({"v": np.zeros(40000)}, 5)
    with pytest.raises(CiphertextError, match="values per chunk"):
        CompactEncryptor(keys, CompactParams(16, 0.5, 4, 10)).decrypt_mean(batch.manifest, batch.chunks)


def test_lane_sum_beyond_what_the_contributors_can_reach_is_refused():
    """Three full-scale contributions decoded as if there were two: a lane exceeds 2 * level."""
    layout = compact_layout(12, 4)
    level = max_level(12)
    reals = sum(pack_lanes(np.full(6, level), layout) for _ in range(3))
    assert unpack_lanes(to_integers(reals), layout, 6, 3).tolist() == [3 * level] * 6
    with pytest.raises(CiphertextError, match="outside ±4094"):
        unpack_lanes(to_integers(reals), layout, 6, 2)


def test_non_zero_padding_is_refused():
    layout = compact_layout(12, 4)
    reals = np.append(pack_lanes(np.arange(5), layout), [0.0, 7.0])
    with pytest.raises(CiphertextError, match="padding reals"):
        unpack_lanes(to_integers(reals), layout, 5, 1)
    odd = pack_lanes(np.arange(6), layout)  # a sixth value where the layout expects five
    with pytest.raises(CiphertextError, match="padding lanes"):
        unpack_lanes(to_integers(odd), layout, 5, 1)


def test_compact_keys_are_refused_by_the_float_sum_path(keys):
    """A compact key (scale 2^19) used for float sums would silently lose precision: refused."""
    from crypto.engine import SumEncryptor

    with pytest.raises(CiphertextError, match="quantized: encrypt with crypto.compact.CompactEncryptor"):
        SumEncryptor(keys)
    with pytest.raises(CiphertextError, match="cannot be used for the compact profile"):
        CompactEncryptor(generate_key_set("sum"), _params())


@pytest.mark.parametrize(
    ("bits", "bound", "silos", "needle"),
    [
        (16, 5e-324, 16, "bound must be a number"),
        (16, float("inf"), 16, "bound must be a number"),
        (16, float("nan"), 16, "bound must be a number"),
        (16, 1e300, 16, "bound must be a number"),
        (True, 0.5, 16, "booleans"),
        (16, 0.5, True, "max_silos"),
        (1, 0.5, 4, "bits must be an integer in 2..32"),
        (33, 0.5, 4, "bits must be an integer in 2..32"),
        (16, 0.5, 0, "max_silos"),
    ],
)
def test_hostile_quantization_parameters_are_refused(bits, bound, silos, needle):
    """A hostile coordinator's job spec: every field is bounded before anything is computed."""
    with pytest.raises(ValueRangeError, match=needle):
        CompactParams(bits, bound, silos, 10)
