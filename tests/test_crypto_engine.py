import os

import numpy as np
import pytest

from crypto.engine import (
    ChunkVerifier,
    SumEncryptor,
    UnencryptedSumForComparisonOnly,
    accumulate_batches,
    decrypt_weighted_mean,
    encrypt_weighted_update,
)
from crypto.errors import CiphertextError, FingerprintMismatchError, ManifestError, ValueRangeError
from crypto.keys import generate_key_set, load_public_context
from crypto.packing import Manifest


@pytest.fixture(scope="module")
def keys():
    return generate_key_set("sum")


@pytest.fixture(scope="module")
def public(keys):
    return load_public_context(keys.export_public())


def _updates(rng, silos=8):
    ups, weights = [], []
    for _ in range(silos):
        ups.append(
            {"layer.weight": rng.normal(0, 0.05, (64, 200)).astype(np.float32), "layer.bias": rng.normal(0, 0.05, 64)}
        )
        weights.append(float(rng.integers(100, 1001)))
    return ups, weights


def test_weighted_mean_of_8_silos_matches_plaintext(keys, public):
    rng = np.random.default_rng(7)
    ups, weights = _updates(rng)
    enc = SumEncryptor(keys)
    batches = [encrypt_weighted_update(enc, u, w) for u, w in zip(ups, weights)]
    acc = accumulate_batches(public, keys.fingerprint, batches)
    result = decrypt_weighted_mean(enc, batches[0].manifest, acc.serialize())
    assert result.total_weight == pytest.approx(sum(weights), abs=1e-6)
    for name in ups[0]:
        expected = sum(u[name].astype(np.float64) * w for u, w in zip(ups, weights)) / sum(weights)
        assert np.abs(result.tensors[name] - expected).max() < 1e-6
        assert result.tensors[name].dtype == ups[0][name].dtype


def test_upload_is_about_8_bytes_per_parameter(keys):
    enc = SumEncryptor(keys)
    vec = np.random.default_rng(0).normal(0, 0.05, 8192 * 8 - 1)
    batch = encrypt_weighted_update(enc, {"v": vec}, 10.0)
    assert batch.nbytes / batch.manifest.value_count < 8.2


def test_subtract_rolls_back_exactly(keys, public):
    rng = np.random.default_rng(3)
    ups, weights = _updates(rng, 3)
    enc = SumEncryptor(keys)
    batches = [encrypt_weighted_update(enc, u, w) for u, w in zip(ups, weights)]
    acc = accumulate_batches(public, keys.fingerprint, batches[:2])
    # third upload fails half way: the chunks it added are removed again (reloaded from bytes)
    verifier = ChunkVerifier(public, batches[2].manifest, keys.fingerprint)
    half = batches[2].manifest.chunk_count // 2
    for i in range(half):
        acc.add(i, verifier.load(i, batches[2].chunks[i]))
    undo = ChunkVerifier(public, batches[2].manifest, keys.fingerprint)
    for i in range(half):
        acc.subtract(i, undo.load(i, batches[2].chunks[i]))
    result = decrypt_weighted_mean(enc, batches[0].manifest, acc.serialize())
    assert result.total_weight == pytest.approx(sum(weights[:2]), abs=1e-6)
    expected = sum(u["layer.bias"] * w for u, w in zip(ups[:2], weights[:2])) / sum(weights[:2])
    assert np.abs(result.tensors["layer.bias"] - expected).max() < 1e-6


def test_thousand_random_and_bit_flipped_blobs_are_rejected_typed(keys, public):
    enc = SumEncryptor(keys)
    batch = encrypt_weighted_update(enc, {"v": np.random.default_rng(1).normal(0, 0.05, 8000)}, 5.0)
    chunk = batch.chunks[0]
    rng = np.random.default_rng(11)
    rejected = 0
    for i in range(1000):
        if i % 2:
            blob = bytearray(chunk)
            pos = int(rng.integers(0, len(blob)))
            blob[pos] ^= 1 << int(rng.integers(0, 8))
            blob = bytes(blob)
        else:
            blob = os.urandom(int(rng.integers(0, 70_000)))
        verifier = ChunkVerifier(public, batch.manifest, keys.fingerprint)
        with pytest.raises(CiphertextError):
            verifier.load(0, blob)
        rejected += 1
    assert rejected == 1000
    # the genuine chunk still loads: the process and the context are intact
    ChunkVerifier(public, batch.manifest, keys.fingerprint).load(0, chunk)


def test_seal_itself_rejects_structurally_broken_chunks(keys, public):
    from crypto.seal_io import load_ciphertext

    chunk = SumEncryptor(keys).encrypt(np.zeros(10))[0]
    for blob in (b"", chunk[:15], chunk[:100], chunk[: len(chunk) // 2], os.urandom(len(chunk))):
        with pytest.raises(CiphertextError):
            load_ciphertext(public.seal_context, blob)


def test_wrong_fingerprint_parameters_count_and_order(keys, public):
    enc = SumEncryptor(keys)
    batch = encrypt_weighted_update(enc, {"v": np.ones(20000) * 0.01}, 3.0)
    other = generate_key_set("sum")
    with pytest.raises(FingerprintMismatchError, match="encrypted under key"):
        ChunkVerifier(public, batch.manifest, other.fingerprint)
    # chunks encrypted under another key but announced with our fingerprint: the digests are of
    # the other chunks, so they fail the signed-manifest check
    foreign = encrypt_weighted_update(SumEncryptor(other), {"v": np.ones(20000) * 0.01}, 3.0)
    with pytest.raises(CiphertextError, match="digest"):
        ChunkVerifier(public, batch.manifest, keys.fingerprint).load(0, foreign.chunks[0])
    # chunks under other *parameters* are refused by SEAL even with a matching digest
    vertical_public = load_public_context(generate_key_set("vertical").export_public())
    assert vertical_public.seal_context is None
    from crypto.keys import _seal_context, _seal_parameters
    from crypto.profiles import Profile
    from crypto.seal_io import load_ciphertext

    ctx_other = _seal_context(_seal_parameters(Profile("x", 8192, (50, 50), 30, "seal-seeded")))
    with pytest.raises(CiphertextError):
        load_ciphertext(ctx_other, batch.chunks[0])
    # order and count
    verifier = ChunkVerifier(public, batch.manifest, keys.fingerprint)
    with pytest.raises(ManifestError, match="out of order"):
        verifier.load(1, batch.chunks[1])
    verifier.load(0, batch.chunks[0])
    with pytest.raises(ManifestError, match="truncated"):
        verifier.finish()
    bad = Manifest(**{**batch.manifest.__dict__, "chunk_digests": batch.manifest.chunk_digests[:1]})
    with pytest.raises(ManifestError, match="chunks but"):
        ChunkVerifier(public, bad, keys.fingerprint)


def test_values_that_would_wrap_are_refused(keys):
    enc = SumEncryptor(keys)
    with pytest.raises(ValueRangeError, match="would wrap"):
        encrypt_weighted_update(enc, {"v": np.ones(5) * 100.0}, 1000.0)
    with pytest.raises(ValueRangeError, match="NaN"):
        encrypt_weighted_update(enc, {"v": np.array([np.nan])}, 1.0)


def test_plaintext_profile_uses_the_same_path():
    enc = UnencryptedSumForComparisonOnly()
    rng = np.random.default_rng(5)
    ups, weights = _updates(rng, 3)
    batches = [encrypt_weighted_update(enc, u, w) for u, w in zip(ups, weights)]
    acc = accumulate_batches(None, "plaintext", batches)
    result = decrypt_weighted_mean(enc, batches[0].manifest, acc.serialize())
    expected = sum(u["layer.bias"] * w for u, w in zip(ups, weights)) / sum(weights)
    assert np.allclose(result.tensors["layer.bias"], expected)


def test_a_contribution_under_another_key_is_caught_when_silos_decrypt(keys, public):
    """The aggregator cannot tell (it has no key); the decrypted total weight can.

    Detection is probabilistic (noise lands on a positive near-whole number ~0.1% of the time), so this
    checks ten independent foreign keys and requires at least nine to be caught."""
    from crypto.packing import Manifest

    rng = np.random.default_rng(9)
    ups, weights = _updates(rng, 3)
    enc = SumEncryptor(keys)
    honest = [encrypt_weighted_update(enc, u, w) for u, w in zip(ups[:2], weights[:2])]
    caught = 0
    for _ in range(10):
        rogue = encrypt_weighted_update(SumEncryptor(generate_key_set("sum")), ups[2], weights[2])
        forged = Manifest(**{**rogue.manifest.__dict__, "fingerprint": keys.fingerprint})  # lies about its key
        acc = accumulate_batches(public, keys.fingerprint, [*honest, type(rogue)(forged, rogue.chunks)])  # accepted
        try:
            decrypt_weighted_mean(enc, honest[0].manifest, acc.serialize())
        except CiphertextError as exc:
            assert "encrypted under another key" in str(exc)
            caught += 1
    assert caught >= 9
    # honest aggregates of whole sample counts pass the same check
    fine = accumulate_batches(public, keys.fingerprint, honest)
    assert decrypt_weighted_mean(enc, honest[0].manifest, fine.serialize()).total_weight == pytest.approx(
        sum(weights[:2]), abs=1e-6
    )
