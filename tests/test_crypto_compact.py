"""Profile ``compact``: quantizer, lane layout and exact encrypted lane sums (property tests).

Real SEAL ciphertexts throughout; hypothesis is derandomized and bounded so the module stays quick.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto.compact import CompactEncryptor, CompactParams, default_bits, mask_length_for
from crypto.engine import ChunkVerifier, accumulate_batches
from crypto.errors import ValueRangeError
from crypto.keys import generate_key_set, load_public_context
from crypto.lanes import (
    EXACT_INTEGER_BITS,
    MAX_SILOS,
    compact_layout,
    pack_lanes,
    to_integers,
    unpack_lanes,
)
from crypto.packing import chunk_digest
from crypto.quantize import UniformStream, max_level, quantize, step

FAST = settings(max_examples=25, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=6, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def keys():
    return generate_key_set("compact")


@pytest.fixture(scope="module")
def public(keys):
    return load_public_context(keys.export_public())


# ---- quantizer -------------------------------------------------------------------------------------


@FAST
@given(
    x=st.floats(-1.0, 1.0, allow_nan=False),
    bits=st.integers(2, 16),
    factor=st.floats(0.01, 1.0),
)
def test_stochastic_rounding_is_unbiased(x, bits, factor):
    """The mean of many roundings of one value converges to value / step (5-sigma band)."""
    n = 20_000
    q = quantize(np.full(n, x), 1.0, bits, UniformStream(b"\x01" * 32), factor=factor)
    target = factor * x / step(1.0, bits)
    assert q.clipped == 0
    assert np.all(np.abs(q.values - target) < 1)  # only the two neighbouring integers
    frac = target - math.floor(target)
    sigma = math.sqrt(frac * (1 - frac) / n) + 1e-12
    assert abs(q.values.mean() - target) <= 5 * sigma + 1e-9


def test_rounding_is_seeded_and_fresh_by_default():
    v = np.random.default_rng(0).normal(0, 0.05, 5000)
    a = quantize(v, 0.5, 12, UniformStream(b"\x02" * 32)).values
    b = quantize(v, 0.5, 12, UniformStream(b"\x02" * 32)).values
    c = quantize(v, 0.5, 12, UniformStream()).values
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@FAST
@given(bits=st.integers(2, 24), bound=st.floats(1e-3, 1e3))
def test_bound_maps_to_the_symmetric_extremes(bits, bound):
    q = quantize(np.array([bound, -bound, 0.0]), bound, bits, UniformStream(b"\x03" * 32))
    assert q.values.tolist() == [max_level(bits), -max_level(bits), 0]


@FAST
@given(
    values=st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=200),
    bits=st.integers(2, 20),
    bound=st.floats(1e-3, 10.0),
)
def test_values_beyond_the_bound_are_clipped_and_counted_never_wrapped(values, bits, bound):
    v = np.array(values)
    q = quantize(v, bound, bits, UniformStream(b"\x04" * 32))
    level = max_level(bits)
    beyond = np.abs(v) > bound
    assert q.clipped == int(beyond.sum())
    assert np.all(np.abs(q.values) <= level)
    assert np.all(q.values[beyond] == np.sign(v[beyond]) * level)  # saturated at the sign's extreme


# ---- lane layout -----------------------------------------------------------------------------------


@FAST
@given(bits=st.integers(2, 32), silos=st.integers(1, MAX_SILOS))
def test_layout_is_carry_free_or_refused(bits, silos):
    try:
        layout = compact_layout(bits, silos)
    except ValueRangeError as exc:
        assert f"{bits}-bit values" in str(exc) and f"up to {silos} silos" in str(exc)
        return
    worst = silos * max_level(bits)
    assert layout.lane_bits == bits + math.ceil(math.log2(silos))
    assert worst < 2 ** (layout.lane_bits - 1)  # no lane sum reaches its neighbour
    assert worst * sum(2 ** (j * layout.lane_bits) for j in range(layout.lanes_per_real)) <= 2**EXACT_INTEGER_BITS
    assert layout.lanes_per_real >= 2


def test_default_quantization_per_consortium_size():
    assert {n: default_bits(n) for n in (2, 4, 8, 16, 32, 64)} == {2: 19, 4: 18, 8: 17, 16: 16, 32: 15, 64: 14}
    layout = compact_layout(16, 16)
    assert (layout.lane_bits, layout.lanes_per_real) == (20, 2)


@FAST
@given(
    silos=st.integers(1, MAX_SILOS),
    data=st.data(),
)
def test_pack_unpack_sums_exactly_without_encryption(silos, data):
    bits = default_bits(silos)
    layout = compact_layout(bits, silos)
    level = max_level(bits)
    count = data.draw(st.integers(1, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    contributions = [rng.integers(-level, level + 1, count) for _ in range(silos)]
    reals = sum(pack_lanes(c, layout) for c in contributions)
    padded = np.append(reals, np.zeros(3))
    sums = unpack_lanes(to_integers(padded), layout, count, silos)
    assert np.array_equal(sums, np.sum(contributions, axis=0))


# ---- encrypted lane sums at the edges of the range -------------------------------------------------

EDGE_PATTERNS = ("max", "min", "alternating")


def _edge_values(pattern, count, bound):
    if pattern == "max":
        return np.full(count, bound)
    if pattern == "min":
        return np.full(count, -bound)
    return np.where(np.arange(count) % 2 == 0, bound, -bound)


def _encrypted_lane_sums(keys, public, silos, pattern):
    """Every silo sends every value at ±bound with weight = cap, i.e. every lane at ±level."""
    bits = default_bits(silos)
    params = CompactParams(bits, 0.5, silos, 7)
    enc = CompactEncryptor(keys, params)
    count = enc.values_per_chunk + 5  # two ciphertexts, the second one mostly padding
    values = _edge_values(pattern, count, 0.5)
    batches = [enc.encrypt_update({"v": values}, 7) for _ in range(silos)]
    acc = accumulate_batches(public, keys.fingerprint, batches)
    sums = enc.decrypt_lane_sums(batches[0].manifest, acc.serialize())
    expected = silos * np.rint(values / params.step).astype(np.int64)
    return sums, expected, enc, batches[0].manifest, acc


@SLOW
@given(silos=st.integers(2, MAX_SILOS), pattern=st.sampled_from(EDGE_PATTERNS))
def test_lane_sums_exact_at_the_edges_for_2_to_64_silos(keys, public, silos, pattern):
    sums, expected, _, _, _ = _encrypted_lane_sums(keys, public, silos, pattern)
    assert np.abs(expected).max() == silos * max_level(default_bits(silos))
    assert np.array_equal(sums.values, expected)
    assert (sums.contributors, sums.total_weight) == (silos, 7 * silos)


@pytest.mark.parametrize("pattern", EDGE_PATTERNS)
def test_lane_sums_exact_with_the_largest_consortium(keys, public, pattern):
    sums, expected, _, _, _ = _encrypted_lane_sums(keys, public, MAX_SILOS, pattern)
    assert np.array_equal(sums.values, expected)


# ---- weighted mean ----------------------------------------------------------------------------------


def test_weighted_mean_of_unequal_silos_is_close_to_float64(keys, public):
    rng = np.random.default_rng(11)
    ups = [{"w": rng.normal(0, 0.05, (30, 40)).astype(np.float32), "b": rng.normal(0, 0.05, 30)} for _ in range(6)]
    weights = [120, 980, 400, 55, 700, 1000]
    params = CompactParams(default_bits(16), 0.5, 16, 1000)
    enc = CompactEncryptor(keys, params)
    batches = [enc.encrypt_update(u, w) for u, w in zip(ups, weights)]
    assert all(b.clipped == 0 and not b.weight_capped for b in batches)
    result = enc.decrypt_mean(batches[0].manifest, accumulate_batches(public, keys.fingerprint, batches).serialize())
    assert (result.total_weight, result.contributors) == (sum(weights), 6)
    for name in ups[0]:
        expected = sum(u[name].astype(np.float64) * w for u, w in zip(ups, weights)) / sum(weights)
        # each silo's rounding error is below one step times w_i/W; the mean's is far below
        assert np.abs(result.tensors[name] - expected).max() < params.step * 1000 * 6 / sum(weights)
        assert result.tensors[name].dtype == ups[0][name].dtype


def test_upload_and_aggregate_sizes(keys, public):
    params = CompactParams(default_bits(16), 0.5, 16, 1000)
    enc = CompactEncryptor(keys, params)
    vec = np.random.default_rng(0).normal(0, 0.05, enc.values_per_chunk * 3)
    batches = [enc.encrypt_update({"v": vec}, 500) for _ in range(2)]
    assert batches[0].nbytes / vec.size < 4.1
    aggregate = accumulate_batches(public, keys.fingerprint, batches).serialize()
    assert sum(len(c) for c in aggregate) / vec.size < 8.3


def test_weight_above_the_cap_is_capped_and_reported(keys, public):
    enc = CompactEncryptor(keys, CompactParams(12, 0.5, 4, 100))
    batch = enc.encrypt_update({"v": np.full(10, 0.25)}, 250)
    assert (batch.weight, batch.weight_capped) == (100, True)
    result = enc.decrypt_mean(batch.manifest, accumulate_batches(public, keys.fingerprint, [batch]).serialize())
    assert result.total_weight == 100
    assert np.abs(result.tensors["v"] - 0.25).max() <= step(0.5, 12)


def test_rollback_by_subtraction_is_exact(keys, public):
    enc = CompactEncryptor(keys, CompactParams(12, 0.5, 4, 100))
    a = enc.encrypt_update({"v": np.full(10, 0.25)}, 100)
    b = enc.encrypt_update({"v": np.full(10, -0.5)}, 50)
    acc = accumulate_batches(public, keys.fingerprint, [a, b])
    acc.subtract(0, ChunkVerifier(public, b.manifest, keys.fingerprint).load(0, b.chunks[0]))
    sums = enc.decrypt_lane_sums(a.manifest, acc.serialize())
    assert (sums.contributors, sums.total_weight) == (1, 100)
    assert np.abs(sums.values - max_level(12) / 2).max() <= 0.5  # 1023 or 1024: only a's rounding left


# ---- benchmarks at a tiny size ------------------------------------------------------------------


def test_lane_headroom_benchmark_runs_and_backs_the_constants(tmp_path):
    from tests.test_cli_and_benchmarks import run_benchmark

    result = run_benchmark(
        "benchmarks.lane_headroom", ["--scales", "19,24", "--counts", "1,2", "--chunks", 1], tmp_path
    )
    rows = {r["scale_bits"]: r for r in result["rows"]}
    assert rows[19]["modulus_limit_bits"] == EXACT_INTEGER_BITS  # the constant crypto/lanes.py uses
    for row in rows.values():
        for scaled in row["max_abs_error_scaled_log2"].values():
            assert 6 < scaled < 13  # ~2^10 for one ciphertext, independent of the scale
    assert result["recommended"]["scale_bits"] == 19


def test_crypto_throughput_compact_profile_runs_on_a_tiny_size(tmp_path):
    from tests.test_cli_and_benchmarks import run_benchmark

    result = run_benchmark(
        "benchmarks.crypto_throughput",
        ["--profile", "compact", "--params", 32760, "--silos", 2, "--no-baseline"],
        tmp_path,
    )
    keys = (
        "upload_bytes_per_param",
        "aggregate_bytes_per_param",
        "encrypt_params_per_s",
        "aggregate_params_per_s",
        "decrypt_params_per_s",
        "max_abs_error",
        "engine_cpu_ns_per_param",
    )
    for key in keys:
        assert result[key] > 0
        assert result["sum_profile"][key] > 0
    assert result["profile"] == "compact" and result["bits"] == 16 and result["lanes_per_real"] == 2
    assert result["max_abs_error"] < 1e-3
    assert result["upload_bytes_per_param"] < result["sum_profile"]["upload_bytes_per_param"] / 1.9
    assert result["engine_cpu_ratio_vs_sum"] > 0


def test_compact_accuracy_benchmark_runs_on_a_tiny_size(tmp_path):
    from tests.test_cli_and_benchmarks import run_benchmark

    result = run_benchmark(
        "benchmarks.compact_accuracy",
        [
            "--params",
            3000,
            "--silos",
            4,
            "--caps",
            1,
            "--bounds",
            0.5,
            "--distributions",
            "normal",
            "--weights",
            "uniform-100-1000",
        ],
        tmp_path,
    )
    (row,) = result["rows"]
    assert row["clipped_values"] == 0
    assert 0 < row["rms_error"] == row["rms_error_vs_clipped_mean"] <= row["predicted_rms_bound"]


def test_compact_profile_uses_the_sum_parameters_at_the_measured_scale():
    import tenseal.sealapi as seal

    from crypto.lanes import SCALE_BITS
    from crypto.profiles import HE_STANDARD_128_MAX_BITS, get_profile

    compact, plain_sum = get_profile("compact"), get_profile("sum")
    assert (compact.poly_modulus_degree, compact.coeff_modulus_bits, compact.engine) == (
        plain_sum.poly_modulus_degree,
        plain_sum.coeff_modulus_bits,
        plain_sum.engine,
    )
    assert compact.scale_bits == SCALE_BITS
    assert sum(compact.coeff_modulus_bits) <= HE_STANDARD_128_MAX_BITS[8192]
    assert sum(compact.coeff_modulus_bits) <= seal.CoeffModulus.MaxBitCount(8192, seal.SEC_LEVEL_TYPE.TC128)


def test_the_quantization_travels_signed_in_the_manifest(keys, public):
    """Bits, bound, weight cap and rounding are in the manifest the silo signs: changing any of them
    changes its digest (so the upload signature breaks), and an aggregate quantized otherwise is refused."""
    import dataclasses
    import json

    from crypto.errors import ManifestError
    from protocol.messages import manifest_from_proto, manifest_to_proto

    params = CompactParams(default_bits(4), 0.5, 4, 100)
    enc = CompactEncryptor(keys, params)
    batch = enc.encrypt_update({"w": np.full(50, 0.01)}, 10)
    manifest = batch.manifest
    assert json.loads(manifest.quantization) == {
        "bits": params.bits,
        "bound": 0.5,
        "max_silos": 4,
        "rounding": "stochastic",
        "weight_cap": 100,
    }
    assert manifest_from_proto(manifest_to_proto(manifest)) == manifest  # crosses the wire intact
    other = dataclasses.replace(manifest, quantization=CompactParams(params.bits, 0.25, 4, 100).describe())
    assert other.digest() != manifest.digest() and other.layout_key() != manifest.layout_key()
    chunks = accumulate_batches(public, keys.fingerprint, [batch]).serialize()
    with pytest.raises(ManifestError, match="quantized as"):
        enc.decrypt_mean(other, chunks)
    assert enc.decrypt_mean(manifest, chunks).contributors == 1


# ---- chunk count with contributor tags ----------------------------------------------------------------


@pytest.mark.parametrize("secure_aggregation", [False, True])
def test_tags_that_spill_into_one_more_ciphertext_encrypt_travel_and_decrypt(keys, public, secure_aggregation):
    """Each tag takes a real of its own after the lanes: 16,376 values at 2 lanes per real fill one ciphertext's
    8,190 data reals but for two, so 4 tags need a second ciphertext. The manifest's chunk count used to count the
    tags as lane values (16,380 values: one ciphertext) and refused the encryptor's own upload."""
    from dataclasses import replace

    from crypto.errors import ManifestError
    from protocol.messages import manifest_from_proto, manifest_to_proto

    params = CompactParams(15, 0.5, 4, 100, secure_aggregation=secure_aggregation)  # 15 bits: masked lanes fit too
    enc = CompactEncryptor(keys, params)
    assert (enc.values_per_chunk, enc.data_reals_per_chunk) == (16380, 8190)
    tags = np.array([3.0, 0.0, 7.5, 1.0])
    for n in (16372, 16376, 16378, 16380, 16381):  # one ciphertext, then spilling, then values alone overflowing
        values = np.random.default_rng(n).uniform(-0.4, 0.4, n)
        mask = (lambda x: x) if secure_aggregation else None  # the identity: this test is about the count
        batch = enc.encrypt_update({"v": values}, 60, tags=tags, mask=mask)
        lane_reals = -(-n // 2)
        assert batch.manifest.chunk_count == -(-(lane_reals + 4) // 8190)
        assert manifest_from_proto(manifest_to_proto(batch.manifest)) == batch.manifest  # what the aggregator reads
        none_left = np.zeros(mask_length_for(params, batch.manifest), dtype=np.uint64) if mask else None  # identity
        chunks = accumulate_batches(public, keys.fingerprint, [batch]).serialize()
        result = enc.decrypt_mean(batch.manifest, chunks, none_left)
        assert np.abs(result.tensors["v"] - values).max() <= params.step * 100 / 60  # scaled by w / weight_cap
        assert np.array_equal(result.tags, tags)
        for wrong in (batch.chunks[:-1], [*batch.chunks, batch.chunks[-1]]):  # a count the values do not need
            forged = replace(batch.manifest, chunk_digests=tuple(chunk_digest(c) for c in wrong))
            with pytest.raises(ManifestError, match="chunks but"):
                forged.check_consistent()


def test_a_layout_whose_sizes_wrap_in_int64_is_refused_not_counted_negative():
    """Found by review: with int64 sizes, a tag tensor of shape (2^62, 3) counted -2^62 tags, which cancelled an
    inflated value count in the compact chunk rule and let a one-chunk manifest claim 2^62 values."""
    import json

    from crypto.contributors import CONTRIBUTOR_TAGS
    from crypto.errors import ManifestError
    from protocol import cipherfed_pb2 as pb
    from protocol.messages import manifest_from_proto

    big = 2**62
    layout_json = json.dumps([
        {"name": "a1", "shape": [big], "dtype": "float64", "offset": 0},
        {"name": "a2", "shape": [big + 10], "dtype": "float64", "offset": big},
        {"name": CONTRIBUTOR_TAGS, "shape": [big, 3], "dtype": "float64", "offset": 2 * big + 10},
    ])  # fmt: skip
    message = pb.Manifest(
        profile="compact", fingerprint="fp", layout_json=layout_json, value_count=big + 10,
        values_per_chunk=16380, scale_bits=19, chunk_digests=[bytes(32)], quantization="",
    )  # fmt: skip
    with pytest.raises(ManifestError, match="contributor tags do not fit"):
        manifest_from_proto(message)
