"""PSI and the vertical gradient protocol at the crypto level (real X25519, real TenSEAL CKKS)."""

import numpy as np
import pytest

from crypto.keys import generate_key_set, load_public_context
from crypto.psi import PsiError, PsiParty, blind_many, hash_id, match, normalize_id
from crypto.vertical_codec import VectorCodec, columns_side_by_side, segment_sums, tile


def intersect(a_ids, b_ids, domain="job"):
    a, b = PsiParty(a_ids, domain), PsiParty(b_ids, domain)
    sent_a, sent_b = a.blinded(), b.blinded()
    found = match(b.blind(sent_a), a.blind(sent_b))
    return {(a.order[pa], b.order[pb]) for pa, pb in found.items()}, sent_a, sent_b


def test_exact_intersection_with_normalised_unicode_and_whitespace_ids():
    a_ids = [f"Patient {i}" for i in range(200)] + ["Zoë Ä-1", "ＩＤ-７"]
    b_ids = [f"  patient  {i} " for i in range(100, 300)] + ["zoë ä-1", "id-7"]
    pairs, _, _ = intersect(a_ids, b_ids)
    expected = {(i, i - 100) for i in range(100, 200)} | {(200, 200), (201, 201)}
    assert pairs == expected
    assert normalize_id("  ＩＤ-７\t") == normalize_id("id-7")


def test_duplicates_and_empty_intersections_are_errors():
    with pytest.raises(PsiError, match="duplicated id"):
        PsiParty(["a-1", "A-1 ", "b"], "job")
    with pytest.raises(PsiError, match="no ids"):
        PsiParty([], "job")
    pairs, _, _ = intersect(["x1", "x2"], ["y1", "y2"])
    assert pairs == set()


def test_what_leaves_a_party_is_blinded_and_shuffled():
    ids = [f"mrn-{i:06d}" for i in range(500)]
    _, sent_a, _ = intersect(ids, ids[:10])
    hashes = {hash_id(normalize_id(i), "job") for i in ids}
    blob = b"".join(sent_a)
    assert not hashes & set(sent_a)  # not the plain hashes
    assert all(i.encode() not in blob for i in ids[:50])  # no raw ids
    # shuffled: the order of what is sent is not the file order
    party = PsiParty(ids, "job")
    assert party.order != list(range(len(ids)))
    # and another job's domain gives unrelated values for the same ids
    assert hash_id("mrn-000001", "job-a") != hash_id("mrn-000001", "job-b")


def test_blinding_commutes():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    points = [hash_id(str(i), "d") for i in range(50)]
    assert blind_many(a, blind_many(b, points)) == blind_many(b, blind_many(a, points))


@pytest.fixture(scope="module")
def codecs():
    keys = generate_key_set("vertical")
    public = load_public_context(keys.export_public())
    return VectorCodec(keys.public.tenseal_context), VectorCodec(public.tenseal_context)


def test_encrypted_gradient_matches_plaintext_and_the_active_party_sees_only_masked_values(codecs):
    active, passive = codecs
    rng = np.random.default_rng(0)
    batch, columns = 64, 10
    x = rng.normal(size=(batch, columns))
    residual = rng.uniform(-1, 1, batch)
    mask = rng.uniform(-4096, 4096, batch * columns)
    # active: Enc(d) tiled; passive: times its columns, plus mask; active: decrypt and sum segments
    sent = active.encrypt(tile(residual, columns))
    returned = passive.multiply_add(sent, columns_side_by_side(x), mask)
    decrypted = active.decrypt(returned)
    masked_sums = segment_sums(decrypted, columns, batch)
    gradient = (masked_sums - mask.reshape(columns, batch).sum(axis=1)) / batch
    expected = x.T @ residual / batch
    assert np.abs(gradient - expected).max() < 1e-4
    # what the active party decrypted is masked: neither the per-sample products nor the gradient
    products = columns_side_by_side(x) * tile(residual, columns)
    assert np.abs(decrypted[: batch * columns] - products).min() > 0.5
    assert np.abs(masked_sums / batch - expected).min() > 1.0
    # the passive party cannot decrypt the residual it was sent
    with pytest.raises(Exception):
        passive.decrypt(sent)


def test_aggregator_sum_of_partial_scores(codecs):
    active, public = codecs
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=100) for _ in range(3)]
    summed = public.add([public.encrypt(p) for p in parts])
    assert np.abs(active.decrypt(summed)[:100] - sum(parts)).max() < 1e-5


def test_plaintext_codec_runs_the_same_protocol():
    codec = VectorCodec(None)
    x, d = np.arange(12.0).reshape(4, 3), np.array([0.1, -0.2, 0.3, 0.4])
    out = codec.decrypt(codec.multiply_add(codec.encrypt(tile(d, 3)), columns_side_by_side(x), np.zeros(12)))
    assert np.allclose(segment_sums(out, 3, 4), x.T @ d)
