"""Secure aggregation core (crypto/secagg): correctness properties, policy rules and frozen formats.

Attacks (forgery, replay, both shares, split views, coalitions) are in test_adversarial_secagg.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crypto.secagg import (
    RoundContext,
    SecAggPolicyError,
    neighbour_graph,
    round_graph_seed,
    tolerated_coalition,
    validate_policy,
)
from crypto.secagg.encoding import decode_fields, encode_fields
from crypto.secagg.errors import EncodingError, ReconstructionError, SecAggError
from crypto.secagg.keys import Advertisement, Roster, RoundKeys, pairwise_seed
from crypto.secagg.masking import apply_pad, mask_pad, mask_vector
from crypto.secagg.prg import add_stream, expand
from crypto.secagg.shamir import PRIME, Share, reconstruct, reconstruct_checked, split
from crypto.secagg.simulation import finish_round, make_members, setup_round
from crypto.secagg.unmask import ContributorStatement, RevealedSecrets, ShareResponder
from crypto.secagg.wire import decode_revealed, encode_revealed
from protocol.secagg import UnmaskingRecord, decode_unmasking, encode_unmasking

CTX = RoundContext("consortium-a", "job-1", 4)
VECTORS = json.loads((Path(__file__).parent / "vectors" / "secagg.json").read_text())


def _is_probable_prime(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_the_shamir_field_is_the_smallest_prime_above_2_to_the_256():
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime((1 << 256) + k) for k in range(1, 297))


# --- mask expansion ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), w=st.integers(1, 62), length=st.integers(0, 300))
def test_expansion_is_deterministic_and_in_range(seed, w, length):
    a = expand(seed, length, w)
    assert a.dtype == np.uint64 and a.shape == (length,)
    assert np.array_equal(a, expand(seed, length, w))
    assert length == 0 or int(a.max()) < 1 << w
    # a prefix of a longer expansion: one keystream, read in order
    assert np.array_equal(a, expand(seed, length + 5, w)[:length])


def test_expansion_is_uniform_mod_2_to_the_w():
    from scipy.stats import chisquare

    values = expand(bytes(range(32)), 64_000, 8)
    counts = np.bincount(values.astype(np.int64), minlength=256)
    assert chisquare(counts).pvalue > 1e-3


def _keystream_words(seed: bytes, length: int) -> np.ndarray:
    """The PRG's definition, written the plain way: one AES-256-CTR keystream (zero IV) as uint64 words."""
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)) + encryptor.finalize(), dtype="<u8").astype(np.uint64)


def test_streams_added_in_place_read_one_keystream_across_block_boundaries():
    """add_stream makes the keystream in 256 KiB blocks; at a block edge it must read on, not restart."""
    w = 17
    modulus = np.uint64((1 << w) - 1)
    for length in (1, 32_767, 32_768, 32_769, 2 * 32_768 + 5):
        first, second = bytes(range(32)), bytes(range(1, 33))
        total = np.arange(length, dtype=np.uint64)
        add_stream(total, first)
        add_stream(total, second, subtract=True)
        total &= modulus
        base = np.arange(length, dtype=np.uint64)
        expected = (base + _keystream_words(first, length) - _keystream_words(second, length)) & modulus
        assert np.array_equal(total, expected), length
        assert np.array_equal(expand(first, length, w), _keystream_words(first, length) & modulus), length


@pytest.mark.parametrize("total", [np.zeros(4, dtype=np.int64), np.zeros((2, 2), dtype=np.uint64), [0, 0]])
def test_add_stream_refuses_anything_but_a_flat_uint64_vector(total):
    with pytest.raises(SecAggError, match="uint64 vector"):
        add_stream(total, bytes(32))


@pytest.mark.parametrize("w", [0, 63, 64, -1, True])
def test_expansion_refuses_widths_outside_1_to_62(w):
    with pytest.raises(SecAggError, match="mask width"):
        expand(bytes(32), 4, w)


# --- masks cancel -----------------------------------------------------------------------------


def _unsigned_roster(n: int, context: RoundContext = CTX) -> tuple[Roster, dict[str, RoundKeys]]:
    """Adverts without signatures: only for properties of the masks themselves (signing is tested elsewhere)."""
    keys = {bytes([i]).hex() * 32: RoundKeys.generate() for i in range(n)}
    adverts = [Advertisement(context, fp, k.mask_public(), k.share_public(), bytes(32)) for fp, k in keys.items()]
    return Roster.build(context, adverts), keys


@settings(max_examples=12, deadline=None)
@given(n=st.integers(3, 64), w=st.integers(1, 62), length=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
@example(n=64, w=62, length=8, seed=1)
@example(n=3, w=1, length=1, seed=0)
def test_pairwise_masks_cancel_exactly_in_the_sum_mod_2_to_the_w(n, w, length, seed):
    roster, keys = _unsigned_roster(n)
    rng = np.random.default_rng(seed)
    values = {fp: rng.integers(0, 1 << w, length, dtype=np.uint64) for fp in keys}
    total = np.zeros(length, dtype=np.uint64)
    self_masks = np.zeros(length, dtype=np.uint64)
    for fp, k in keys.items():
        total += mask_vector(values[fp], w, CTX, k, fp, roster, roster.members, threshold=n // 2 + 1)
        self_masks += expand(k.self_seed, length, w)
    exact = sum(values.values(), np.zeros(length, dtype=np.uint64))
    modulus = np.uint64((1 << w) - 1)
    assert np.array_equal((total - self_masks) & modulus, exact & modulus)


@settings(max_examples=10, deadline=None)
@given(w=st.integers(1, 62), length=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_a_pad_expanded_in_advance_masks_exactly_like_the_masks_written_the_plain_way(w, length, seed):
    """mask_vector is built on mask_pad: compare with each mask expanded on its own and added (the definition)."""
    roster, keys = _unsigned_roster(4)
    me = roster.members[1]  # pairwise masks of both signs
    values = np.random.default_rng(seed).integers(0, 1 << w, length, dtype=np.uint64)
    mine = keys[me]
    expected = values + expand(mine.self_seed, length, w)
    for peer in roster.members:
        if peer != me:
            stream = expand(
                pairwise_seed(CTX, mine.mask_private, me, mine.mask_public(), roster.advert(peer)), length, w
            )
            expected = expected + stream if me < peer else expected - stream
    expected &= np.uint64((1 << w) - 1)
    assert np.array_equal(mask_vector(values, w, CTX, mine, me, roster, roster.members, threshold=3), expected)
    pad = mask_pad(length, w, CTX, keys[me], me, roster, roster.members, threshold=3)
    own = values.copy()
    masked = apply_pad(own, pad, w)
    assert np.array_equal(masked, expected)
    assert masked is own  # the caller's uint64 vector is written, not copied
    with pytest.raises(SecAggError, match="expand it again"):
        apply_pad(values[:-1] if length > 1 else np.zeros(2, dtype=np.uint64), pad, w)
    with pytest.raises(SecAggError, match="peers to mask with"):
        mask_pad(length, w, CTX, keys[me], me, roster, roster.members, threshold=4)


def test_pairwise_seed_is_symmetric_and_bound_to_the_round():
    roster, keys = _unsigned_roster(3)
    a, b = roster.members[:2]
    ab = pairwise_seed(CTX, keys[a].mask_private, a, keys[a].mask_public(), roster.advert(b))
    ba = pairwise_seed(CTX, keys[b].mask_private, b, keys[b].mask_public(), roster.advert(a))
    assert ab == ba
    other = RoundContext(CTX.consortium, CTX.job, CTX.round + 1)
    assert pairwise_seed(other, keys[a].mask_private, a, keys[a].mask_public(), roster.advert(b)) != ab


# --- full rounds with dropouts ----------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(n=st.integers(3, 7), data=st.data())
def test_with_dropouts_the_unmasked_sum_is_the_exact_sum_of_the_survivors(n, data):
    threshold = (n - 1) // 2 + 1
    drops = data.draw(st.integers(0, n - 1 - threshold))
    members = make_members(n)
    aggregator = make_members(1, "aggregator")[0]
    dropped = {m.fingerprint for m in members[:drops]}
    w, length = 20, 50
    rng = np.random.default_rng(n * 10 + drops)
    values = {m.fingerprint: rng.integers(0, 1 << 16, length, dtype=np.uint64) for m in members}
    sim = setup_round(members, CTX, values, w, threshold, drop_before_upload=dropped)
    total, result = finish_round(sim, aggregator, length)
    expected = sum((values[fp] for fp in values if fp not in dropped), np.zeros(length, dtype=np.uint64))
    assert np.array_equal(total, expected)  # < 2^w: the reduction mod 2^w does not lose the sum
    assert result.rejected_responses == {} and result.wrong_shares == {}


def test_sparse_graph_round_with_a_dropout_is_exact():
    members = make_members(10)
    aggregator = make_members(1, "aggregator")[0]
    dropped = {members[3].fingerprint}
    values = {m.fingerprint: np.arange(20, dtype=np.uint64) * (i + 1) for i, m in enumerate(members)}
    sim = setup_round(members, CTX, values, 24, 3, k=4, drop_before_upload=dropped)
    assert all(len(v) == 4 for v in sim.graph.values())
    total, _ = finish_round(sim, aggregator, 20)
    assert np.array_equal(total, sum(v for fp, v in values.items() if fp not in dropped))


# --- Shamir -----------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(2, 12), data=st.data())
def test_any_t_shares_reconstruct_and_fewer_fail_clearly(secret, n, data):
    t = data.draw(st.integers(1, n))
    shares = split(secret, t, list(range(1, n + 1)))
    chosen = data.draw(st.permutations(shares))[:t]
    assert reconstruct(chosen, t) == secret
    if t > 1:
        with pytest.raises(ReconstructionError, match=f"{t - 1} distinct shares received, {t} needed"):
            reconstruct(chosen[: t - 1], t)


def test_a_wrong_share_is_detected_and_its_holder_named():
    secret = bytes(range(32))
    shares = split(secret, 3, [1, 2, 3, 4, 5])
    shares[1] = Share(shares[1].x, (shares[1].y + 1) % PRIME)
    recovered, bad = reconstruct_checked(shares, 3, lambda s: s == secret)
    assert recovered == secret and bad == [2]


# --- graph and policy -------------------------------------------------------------------------


def test_sparse_graph_is_k_regular_symmetric_and_derived_from_the_public_round_seed():
    members = [bytes([i]).hex() * 32 for i in range(64)]
    graph = neighbour_graph(members, round_graph_seed(CTX), 8)
    assert all(len(v) == 8 and m not in v for m, v in graph.items())
    assert all(m in graph[p] for m, v in graph.items() for p in v)
    assert graph == neighbour_graph(list(reversed(members)), round_graph_seed(CTX), 8)
    later = RoundContext(CTX.consortium, CTX.job, CTX.round + 1)
    assert graph != neighbour_graph(members, round_graph_seed(later), 8)
    complete = neighbour_graph(members, round_graph_seed(CTX))
    assert all(len(v) == 63 for v in complete.values())


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"members": 2, "threshold": 1}, "members", "3 to"),
        ({"members": 5, "threshold": 2}, "threshold", "exceed half of the 4 share holders"),
        ({"members": 5, "threshold": 5}, "threshold", "cannot exceed the 4 share holders"),
        ({"members": 64, "threshold": 4, "neighbours": 8}, "threshold", "exceed half of the 8"),
        ({"members": 64, "threshold": 9, "neighbours": 8}, "threshold", "k >= t"),
        ({"members": 64, "threshold": 5, "neighbours": 7}, "neighbours", "even"),
        ({"members": 5, "threshold": 3, "min_participants": 3}, "min_participants", r"threshold \+ 1 = 4"),
        ({"members": 5, "threshold": "3"}, "threshold", "integer"),
    ],
)
def test_policy_refusals_name_the_field_and_the_fix(kwargs, field, reason):
    with pytest.raises(SecAggPolicyError, match=reason) as info:
        validate_policy(**kwargs)
    assert info.value.field == field


def test_valid_policies_and_what_they_tolerate():
    assert validate_policy(5, 3).min_participants == 4
    assert validate_policy(64, 5, neighbours=8).holders == 8
    assert validate_policy(6, 5, neighbours=8).neighbours is None  # k >= n - 1 is the complete graph
    assert tolerated_coalition(4, 3) == {"passive": 2, "active": 2, "dropouts": 0}
    assert tolerated_coalition(16, 9) == {"passive": 8, "active": 2, "dropouts": 6}
    assert tolerated_coalition(5, 3) == {"passive": 2, "active": 1, "dropouts": 1}


# --- encodings and frozen vectors -------------------------------------------------------------


def test_field_decoding_refuses_truncation_trailing_bytes_and_other_tags():
    data = encode_fields(b"tag", b"a", b"bc")
    assert decode_fields(data, b"tag", 2) == [b"a", b"bc"]
    for bad, match in ((data[:-1], "field"), (data + b"x", "trailing"), (encode_fields(b"other", b"a", b"bc"), "tag")):
        with pytest.raises(EncodingError, match=match):
            decode_fields(bad, b"tag", 2)


def test_frozen_context_advertisement_and_statement_encodings():
    v = VECTORS["encodings"]
    ctx = RoundContext(**v["context"])
    assert ctx.encode().hex() == v["context_hex"]
    advert = Advertisement(
        ctx, v["sender"], bytes.fromhex(v["mask_public"]), bytes.fromhex(v["share_public"]), bytes.fromhex(v["commit"])
    )
    assert advert.signed_bytes().hex() == v["advert_signed_hex"]
    statement = ContributorStatement.make(ctx, v["roster"], v["contributors"])
    assert statement.encode().hex() == v["statement_hex"]
    assert ContributorStatement.decode(bytes.fromhex(v["statement_hex"])) == statement
    roster = v["roster"]
    secrets = RevealedSecrets(statement, {roster[0]: bytes(range(32)), roster[1]: bytes([5]) * 32}, {roster[2]: bytes([7]) * 32})
    assert encode_revealed(secrets).hex() == v["revealed_hex"]  # what a masked aggregate carries to every silo
    assert decode_revealed(bytes.fromhex(v["revealed_hex"]), 3) == secrets
    record = decode_unmasking(bytes.fromhex(v["unmasking_hex"]), 3)
    assert record == UnmaskingRecord(b"roster-bytes", secrets)
    assert encode_unmasking(record).hex() == v["unmasking_hex"]


def test_frozen_prg_expansion_and_pairwise_seed():
    v = VECTORS["prg"]
    for case in v["cases"]:
        got = expand(bytes.fromhex(case["seed"]), case["length"], case["w"])
        assert [int(x) for x in got] == case["expected"]
    p = VECTORS["pairwise_seed"]
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    ctx = RoundContext(**VECTORS["encodings"]["context"])
    me = X25519PrivateKey.from_private_bytes(bytes.fromhex(p["a_private"]))
    keys = RoundKeys(me, X25519PrivateKey.generate(), bytes(32))
    peer = Advertisement(ctx, p["b"], bytes.fromhex(p["b_public"]), bytes(32), bytes(32))
    assert pairwise_seed(ctx, me, p["a"], keys.mask_public(), peer).hex() == p["expected"]


def test_responder_state_survives_a_restart():
    members = make_members(3)
    responder = ShareResponder(members[0].fingerprint, members[0].key)
    responder.revealed[(CTX.encode(), "ab" * 32)] = "self"
    responder.committed[CTX.encode()] = b"\x01" * 32
    restored = ShareResponder(members[0].fingerprint, members[0].key)
    restored.load_state(json.loads(json.dumps(responder.export_state())))
    assert restored.revealed == responder.revealed and restored.committed == responder.committed


def test_cost_benchmark_runs_at_a_tiny_size_and_reports_every_phase():
    from benchmarks.secagg_cost import main

    out = main(["--silos", "6", "--params", "500", "--neighbours", "4", "--dropouts", "1"])
    graphs = [r["graph"] for r in out["results"]]
    assert graphs == ["complete", "k=4"]
    for r in out["results"]:
        assert set(r["per_silo_seconds"]) >= {
            "shamir_share_and_seal", "open_shares", "mask_expansion_incl_agreement", "remove_masks"
        }  # fmt: skip
        assert r["per_silo_seconds"]["remove_masks"] > 0
        assert r["aggregator_unmask_seconds"] > 0 and r["bytes_per_silo"]["unmask_response"] > 0
