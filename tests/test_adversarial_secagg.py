"""Attacks on the secure-aggregation core (crypto/secagg), each refused; crypto only, no processes.

The aggregator relays every message and may lie; silos may collude with it. Each test plays the
attacker with real certificates, signatures, AEAD envelopes and masks (crypto.secagg.simulation).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare, pearsonr

from crypto.secagg import (
    AdvertisementError,
    BothSharesRefused,
    NotEnoughSurvivors,
    RoundContext,
    ShareTransportError,
    SplitViewRefused,
    UnmaskRefused,
    advertise,
    open_shares,
    verify_advertisement,
)
from crypto.secagg.errors import EncodingError, ReconstructionError
from crypto.secagg.keys import RoundKeys, pairwise_seed
from crypto.secagg.prg import expand
from crypto.secagg.shamir import reconstruct
from crypto.secagg.simulation import Member, SimRound, finish_round, make_members, setup_round
from crypto.secagg.transport import ShareEnvelope
from crypto.secagg.unmask import (
    ContributorStatement,
    RevealedSecrets,
    StatementSignature,
    UnmaskResponse,
    apply_correction,
    make_request,
    mask_correction,
    reveal,
    unmask,
)
from crypto.secagg.wire import decode_revealed, encode_revealed

CTX = RoundContext("consortium-a", "job-1", 9)
ALPHA = 1e-4  # fixed family-wise significance level of the statistical tests


def _round(n: int, threshold: int, *, w: int = 20, length: int = 40, dropped=(), members=None):
    members = members or make_members(n)
    rng = np.random.default_rng(n)
    values = {m.fingerprint: rng.integers(0, 1 << 12, length, dtype=np.uint64) for m in members}
    sim = setup_round(members, CTX, values, w, threshold, drop_before_upload=dropped)
    return members, values, sim


@pytest.fixture(scope="module")
def aggregator() -> Member:
    return make_members(1, "aggregator")[0]


def _honest_request(sim: SimRound, aggregator: Member, contributors):
    statement = ContributorStatement.make(CTX, sim.roster.members, contributors)
    signatures = [sim.silos[fp].responder.sign_statement(statement, sim.silos[fp].material) for fp in contributors]
    return statement, make_request(statement, aggregator.cert, aggregator.key, signatures)


# --- advertisements -------------------------------------------------------------------------------


def test_forged_substituted_replayed_and_unsigned_advertisements_are_refused():
    alice, bob = make_members(2)
    keys = RoundKeys.generate()
    advert = advertise(keys, CTX, alice.cert, alice.key)
    assert verify_advertisement(advert, CTX, alice.cert) == advert
    mallory = RoundKeys.generate()
    substituted = dataclasses.replace(advert, mask_public=mallory.mask_public())
    with pytest.raises(AdvertisementError, match="does not verify"):
        verify_advertisement(substituted, CTX, alice.cert)
    with pytest.raises(AdvertisementError, match="missing or oversized signature"):
        verify_advertisement(dataclasses.replace(advert, signature=b""), CTX, alice.cert)
    later = RoundContext(CTX.consortium, CTX.job, CTX.round + 1)
    with pytest.raises(AdvertisementError, match="replayed from another round"):
        verify_advertisement(advert, later, alice.cert)
    # the aggregator passes alice's advertisement off as bob's: the names disagree ...
    with pytest.raises(AdvertisementError, match="another sender"):
        verify_advertisement(advert, CTX, bob.cert)
    # ... and re-labelled with bob's fingerprint it carries alice's signature, not bob's
    relabelled = dataclasses.replace(advert, sender=bob.fingerprint)
    with pytest.raises(AdvertisementError, match="does not verify"):
        verify_advertisement(relabelled, CTX, bob.cert)
    # a signature by a key made for the occasion (not the certificate's) does not verify either
    forged = advertise(mallory, CTX, alice.cert, bob.key)
    with pytest.raises(AdvertisementError, match="does not verify"):
        verify_advertisement(forged, CTX, alice.cert)


# --- share envelopes ------------------------------------------------------------------------------


def test_tampered_misrouted_replayed_and_resigned_shares_fail_closed(aggregator):
    members, _, sim = _round(4, 2)
    envelope = sim.envelopes[0]
    sender, recipient = sim.silos[envelope.sender], sim.silos[envelope.recipient]
    roster = sim.roster

    def open_as(e: ShareEnvelope, who=recipient, context=CTX):
        return open_shares(
            e, context, who.keys, who.member.fingerprint, roster.x_of(who.member.fingerprint),
            roster.advert(e.sender), sender.member.cert,
        )  # fmt: skip

    assert open_as(envelope).sender == envelope.sender
    flipped = bytearray(envelope.ciphertext)
    flipped[3] ^= 1
    with pytest.raises(ShareTransportError, match="signature does not verify"):
        open_as(dataclasses.replace(envelope, ciphertext=bytes(flipped)))
    third = next(s for fp, s in sim.silos.items() if fp not in (envelope.sender, envelope.recipient))
    with pytest.raises(ShareTransportError, match="misrouted"):
        open_as(envelope, who=third)
    later = RoundContext(CTX.consortium, CTX.job, CTX.round + 1)
    with pytest.raises(ShareTransportError, match="replay refused"):
        open_as(envelope, context=later)
    # the aggregator tampers and re-signs with its own key: refused by signature, then by AEAD
    resigned = dataclasses.replace(envelope, ciphertext=bytes(flipped))
    resigned = dataclasses.replace(resigned, signature=aggregator.key.sign(resigned.signed_bytes(), _ecdsa()))
    with pytest.raises(ShareTransportError, match="signature does not verify"):
        open_as(resigned)
    tampered_signed = dataclasses.replace(envelope, ciphertext=bytes(flipped))
    tampered_signed = dataclasses.replace(
        tampered_signed, signature=sender.member.key.sign(tampered_signed.signed_bytes(), _ecdsa())
    )
    with pytest.raises(ShareTransportError, match="does not authenticate"):
        open_as(tampered_signed)
    assert ShareEnvelope.from_bytes(envelope.to_bytes()) == envelope


def _ecdsa():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.ECDSA(hashes.SHA256())


# --- unmasking rules ------------------------------------------------------------------------------


def test_asking_for_both_shares_of_one_silo_is_refused_even_after_a_restart(aggregator):
    members, _, sim = _round(5, 3)
    everyone = list(sim.roster.members)
    _, request = _honest_request(sim, aggregator, everyone)
    responder_fp = everyone[1]
    silo = sim.silos[responder_fp]
    answer = silo.responder.respond(request, silo.material, sim.certificates, aggregator.cert)
    assert {s.kind for s in answer.shares} == {"self"}
    victim = everyone[0]
    second = ContributorStatement.make(CTX, everyone, [fp for fp in everyone if fp != victim])
    forged = make_request(second, aggregator.cert, aggregator.key, request.consistency)
    before = dict(silo.responder.revealed)
    with pytest.raises(BothSharesRefused, match="already revealed this round"):
        silo.responder.respond(forged, silo.material, sim.certificates, aggregator.cert)
    assert silo.responder.revealed == before
    restarted = type(silo.responder)(responder_fp, silo.member.key)
    restarted.load_state(silo.responder.export_state())
    with pytest.raises(BothSharesRefused):
        restarted.respond(forged, silo.material, sim.certificates, aggregator.cert)


def test_a_silo_answers_only_the_contributor_set_it_signed(aggregator):
    members, _, sim = _round(5, 3)
    everyone = list(sim.roster.members)
    first, _ = _honest_request(sim, aggregator, everyone)
    other = ContributorStatement.make(CTX, everyone, everyone[1:])
    silo = sim.silos[everyone[2]]
    with pytest.raises(SplitViewRefused):
        silo.responder.sign_statement(other, silo.material)
    # colluding silos (fresh responders: they sign anything) give the second set its signatures
    colluders = [type(silo.responder)(fp, sim.silos[fp].member.key) for fp in everyone[1:]]
    signatures = [c.sign_statement(other, sim.silos[c.me].material) for c in colluders]
    request = make_request(other, aggregator.cert, aggregator.key, signatures)
    with pytest.raises(SplitViewRefused):
        silo.responder.respond(request, silo.material, sim.certificates, aggregator.cert)
    assert silo.responder.revealed == {}


def test_inconsistent_unsigned_and_foreign_requests_are_refused(aggregator):
    members, _, sim = _round(5, 3)
    everyone = list(sim.roster.members)
    statement, request = _honest_request(sim, aggregator, everyone)
    silo = sim.silos[everyone[1]]

    def respond(req):
        return silo.responder.respond(req, silo.material, sim.certificates, aggregator.cert)

    both = dataclasses.replace(statement, dropped=(everyone[0],))
    with pytest.raises(UnmaskRefused, match="both as contributor and as dropped"):
        respond(make_request(both, aggregator.cert, aggregator.key, request.consistency))
    impostor = members[0]  # a silo posing as the aggregator
    with pytest.raises(UnmaskRefused, match="another aggregator"):
        respond(make_request(statement, impostor.cert, impostor.key, request.consistency))
    with pytest.raises(UnmaskRefused, match="does not verify"):
        respond(dataclasses.replace(request, signature=impostor.key.sign(request.signed_bytes(), _ecdsa())))
    with pytest.raises(UnmaskRefused, match="missing or oversized signature"):
        respond(dataclasses.replace(request, signature=b""))
    later = RoundContext(CTX.consortium, CTX.job, CTX.round + 1)
    moved = ContributorStatement.make(later, everyone, everyone)
    with pytest.raises(UnmaskRefused, match="material is for"):
        respond(make_request(moved, aggregator.cert, aggregator.key, request.consistency))
    # consistency signatures: too few, duplicated, or made by the aggregator in the silos' names
    few = make_request(statement, aggregator.cert, aggregator.key, request.consistency[:2])
    with pytest.raises(UnmaskRefused, match="only 2 contributors signed"):
        respond(few)
    duplicated = make_request(statement, aggregator.cert, aggregator.key, request.consistency[:1] * 5)
    with pytest.raises(UnmaskRefused, match="only 1 contributors signed"):
        respond(duplicated)
    fake = [StatementSignature(fp, aggregator.key.sign(b"x", _ecdsa())) for fp in everyone]
    with pytest.raises(UnmaskRefused, match="only 0 contributors signed"):
        respond(make_request(statement, aggregator.cert, aggregator.key, fake))
    says_i_dropped = ContributorStatement.make(CTX, everyone, [fp for fp in everyone if fp != everyone[1]])
    with pytest.raises(UnmaskRefused, match="says this silo dropped"):
        respond(make_request(says_i_dropped, aggregator.cert, aggregator.key, request.consistency))
    other_roster = ContributorStatement.make(CTX, everyone[:-1], everyone[:-1])
    with pytest.raises(UnmaskRefused, match="roster differs from the peers this silo masked with"):
        respond(make_request(other_roster, aggregator.cert, aggregator.key, request.consistency))
    assert silo.responder.revealed == {}
    assert respond(request).responder == everyone[1]


def test_fewer_than_t_survivors_fails_the_round_with_a_clear_reason_and_releases_nothing(aggregator):
    members = make_members(5)
    dropped = {m.fingerprint for m in members[:3]}
    _, _, sim = _round(5, 3, members=members, dropped=dropped)
    survivors = [fp for fp in sim.roster.members if fp not in dropped]
    statement, request = _honest_request(sim, aggregator, survivors)
    for fp in survivors:
        silo = sim.silos[fp]
        with pytest.raises(NotEnoughSurvivors, match="share holders survived, threshold 3"):
            silo.responder.respond(request, silo.material, sim.certificates, aggregator.cert)
        assert silo.responder.revealed == {}
    with pytest.raises(NotEnoughSurvivors, match="2 contributors, at least threshold"):
        unmask(statement, [], sim.roster, sim.graph, 3, sim.w, 40, sim.certificates)


def test_personalised_contributor_sets_do_not_let_the_aggregator_alone_unmask_a_silo(aggregator):
    """The aggregator tells each silo R "only X and you contributed; everyone else dropped".

    If silos answered such requests, R would reveal X's self-seed share and the mask-key share of
    every other silo; with n - 1 answers the aggregator would hold X's self seed and every pairwise
    seed of X, and X's update would be in the clear. The survivors check refuses each request.
    """
    n, t, length = 6, 3, 40
    members, values, sim = _round(n, t, length=length)
    victim = sim.roster.members[0]
    responses: list[UnmaskResponse] = []
    refusals = []
    for responder in sim.roster.members[1:]:
        statement = ContributorStatement.make(CTX, sim.roster.members, [victim, responder])
        silo = sim.silos[responder]
        signature = silo.responder.sign_statement(statement, silo.material)
        request = make_request(statement, aggregator.cert, aggregator.key, [signature])
        try:
            responses.append(silo.responder.respond(request, silo.material, sim.certificates, aggregator.cert))
        except NotEnoughSurvivors as exc:
            refusals.append(exc)
    recovered = _attack(sim, victim, responses, t, length)
    assert recovered is None or not np.array_equal(recovered, values[victim]), "the aggregator unmasked a silo"
    assert len(refusals) == n - 1


def _attack(sim: SimRound, victim: str, responses, t: int, length: int):
    """The aggregator's best use of the answers: victim's self seed, and each peer's mask key."""
    shares: dict[tuple[str, str], list] = {}
    for response in responses:
        for s in response.shares:
            shares.setdefault((s.silo, s.kind), []).append(s.share)
    try:
        total = expand(reconstruct(shares.get((victim, "self"), []), t), length, sim.w)
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

        for peer in sim.roster.members:
            if peer == victim:
                continue
            key = X25519PrivateKey.from_private_bytes(reconstruct(shares.get((peer, "mask"), []), t))
            advert = sim.roster.advert(peer)
            seed = pairwise_seed(CTX, key, peer, advert.mask_public, sim.roster.advert(victim))
            stream = expand(seed, length, sim.w)
            total += stream if victim < peer else np.uint64(0) - stream
    except ReconstructionError:
        return None
    return (sim.silos[victim].masked - total) & np.uint64((1 << sim.w) - 1)


def test_a_wrong_share_is_caught_named_and_does_not_corrupt_the_sum(aggregator):
    members, values, sim = _round(6, 3, dropped=())
    everyone = list(sim.roster.members)
    total, _ = finish_round(sim, aggregator, 40)
    # the cheat has the smallest x, so its wrong shares are in the first subset tried for every silo
    cheat = min(sim.responses, key=lambda r: sim.roster.x_of(r.responder))
    honest = [r for r in sim.responses if r is not cheat]
    bad = [dataclasses.replace(s, share=dataclasses.replace(s.share, y=s.share.y ^ 1)) for s in cheat.shares]
    resigned = dataclasses.replace(cheat, shares=tuple(bad))
    resigned = dataclasses.replace(resigned, signature=sim.silos[cheat.responder].member.key.sign(
        resigned.signed_bytes(), _ecdsa()))  # fmt: skip
    result = unmask(sim.statement, [resigned, *honest], sim.roster, sim.graph, 3, sim.w, 40, sim.certificates)
    masked_sum = sum((sim.silos[fp].masked for fp in everyone), np.zeros(40, dtype=np.uint64))
    assert np.array_equal((masked_sum + result.correction) & np.uint64((1 << sim.w) - 1), total)
    assert set(result.wrong_shares) == {s.silo for s in cheat.shares}
    assert all(v == [cheat.responder] for v in result.wrong_shares.values())
    # an answer the aggregator forged in a silo's name, or replayed from another statement, is set aside
    forged = dataclasses.replace(honest[0], signature=aggregator.key.sign(b"x", _ecdsa()))
    replayed = dataclasses.replace(honest[1], statement_digest=bytes(32))
    result = unmask(sim.statement, [forged, replayed, *honest[2:], cheat], sim.roster, sim.graph,
                    3, sim.w, 40, sim.certificates)  # fmt: skip
    assert set(result.rejected_responses) == {forged.responder, replayed.responder}


# --- collusion ------------------------------------------------------------------------------------


def _coalition_view(n: int, t: int, colluders: int, w: int, length: int, aggregator: Member):
    """A complete honest round; returns the honest victim's true values and the coalition's estimates.

    The coalition is the aggregator (every masked upload, every relayed message, every unmasking
    answer: it reconstructs the victim's self seed) plus ``colluders`` silos (their own keys, so
    their pairwise seeds with the victim, and the shares they hold). It removes the self mask and
    every subset of the pairwise masks it knows (it cannot tell which the victim applied), giving
    one estimate per subset; its best guess is among them.
    """
    members = make_members(n)
    rng = np.random.default_rng(7)
    # a far-from-uniform update: quantized values concentrated around the middle of the range
    center = 1 << (w - 1)
    values = {m.fingerprint: np.clip(rng.normal(center, 6, length), 0, (1 << w) - 1).astype(np.uint64) for m in members}
    sim = setup_round(members, CTX, values, w, t)
    finish_round(sim, aggregator, length)
    victim, *others = sim.roster.members
    coalition = others[:colluders]
    self_shares = [s.share for r in sim.responses for s in r.shares if s.silo == victim and s.kind == "self"]
    base = sim.silos[victim].masked - expand(reconstruct(self_shares, t), length, w)
    streams = []
    for fp in coalition:
        silo = sim.silos[fp]
        seed = pairwise_seed(CTX, silo.keys.mask_private, fp, silo.keys.mask_public(), sim.roster.advert(victim))
        stream = expand(seed, length, w)
        streams.append(stream if victim < fp else np.uint64(0) - stream)
    estimates = []
    for size in range(len(streams) + 1):
        for subset in itertools.combinations(streams, size):
            estimate = base.copy()
            for stream in subset:
                estimate -= stream
            estimates.append(estimate & np.uint64((1 << w) - 1))
    # the coalition's shares of the victim's mask key: one per colluder
    held = [sim.silos[fp].bundles[victim].mask_share for fp in coalition]
    return values[victim], estimates, held


def test_aggregator_with_n_minus_2_silos_sees_only_uniform_noise_unrelated_to_the_update(aggregator):
    n, t, w, length = 5, 4, 8, 25_600  # t = n - 1: the passive coalition bound reaches n - 2 colluders
    truth, estimates, held = _coalition_view(n, t, n - 2, w, length, aggregator)
    bins = 1 << w
    alpha = ALPHA / (2 * len(estimates))  # Bonferroni over every estimate and both tests
    # power check: the same test rejects the true update (it is far from uniform)
    assert chisquare(np.bincount(truth.astype(np.int64), minlength=bins)).pvalue < alpha
    for estimate in estimates:
        assert chisquare(np.bincount(estimate.astype(np.int64), minlength=bins)).pvalue > alpha
        assert pearsonr(truth.astype(float), estimate.astype(float)).pvalue > alpha
        assert not np.array_equal(estimate, truth)
    with pytest.raises(ReconstructionError, match="3 distinct shares received, 4 needed"):
        reconstruct(held, t)


def test_the_collusion_bound_is_tight_t_colluding_silos_do_unmask(aggregator):
    """Documents the limit (crypto.secagg.policy.tolerated_coalition): t colluders hold t shares of the mask key."""
    n, t, w, length = 5, 3, 8, 64
    members = make_members(n)
    values = {m.fingerprint: np.arange(length, dtype=np.uint64) for m in members}
    sim = setup_round(members, CTX, values, w, t)
    finish_round(sim, aggregator, length)
    victim, *others = sim.roster.members
    coalition = others[:t]
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.from_private_bytes(
        reconstruct([sim.silos[fp].bundles[victim].mask_share for fp in coalition], t)
    )
    self_seed = reconstruct([sim.silos[fp].bundles[victim].self_share for fp in coalition], t)
    estimate = sim.silos[victim].masked - expand(self_seed, length, w)
    mine = sim.roster.advert(victim).mask_public
    for peer in others:
        stream = expand(pairwise_seed(CTX, key, victim, mine, sim.roster.advert(peer)), length, w)
        estimate -= stream if victim < peer else np.uint64(0) - stream
    assert np.array_equal(estimate & np.uint64((1 << w) - 1), values[victim])


def test_a_low_order_mask_key_is_refused_instead_of_agreeing_on_a_known_seed():
    """A signed advertisement of the all-zero point would make every pairwise seed with it public."""
    alice, mallory = make_members(2)
    keys = RoundKeys.generate()
    zero = dataclasses.replace(advertise(RoundKeys.generate(), CTX, mallory.cert, mallory.key), mask_public=bytes(32))
    with pytest.raises(AdvertisementError, match="low-order point"):
        pairwise_seed(CTX, keys.mask_private, alice.fingerprint, keys.mask_public(), zero)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=5))
def test_whatever_the_aggregator_asks_a_silo_never_reveals_both_shares_of_one_silo(plans, aggregator, shared_round):
    """Any sequence of well-signed requests (colluders sign everything): one kind per silo per round."""
    members, sim = shared_round
    everyone = list(sim.roster.members)
    me = everyone[0]
    silo = sim.silos[me]
    responder = type(silo.responder)(me, silo.member.key)
    revealed: dict[str, set[str]] = {}
    for alive in plans:
        contributors = [me] + [fp for fp, keep in zip(everyone[1:], alive, strict=False) if keep]
        statement = ContributorStatement.make(CTX, everyone, contributors)
        colluders = [type(silo.responder)(fp, sim.silos[fp].member.key) for fp in contributors]
        signatures = [c.sign_statement(statement, sim.silos[c.me].material) for c in colluders if c.me != me]
        request = make_request(statement, aggregator.cert, aggregator.key, signatures)
        try:
            answer = responder.respond(request, silo.material, sim.certificates, aggregator.cert)
        except (UnmaskRefused, NotEnoughSurvivors):
            continue
        for share in answer.shares:
            revealed.setdefault(share.silo, set()).add(share.kind)
    assert all(len(kinds) == 1 for kinds in revealed.values())


@pytest.fixture(scope="module")
def shared_round():
    members, _, sim = _round(7, 4)
    return members, sim


# --- the revealed secrets a silo removes the masks with ----------------------------------------------


def test_an_aggregator_cannot_shift_the_correction_with_wrong_revealed_secrets(aggregator):
    """The aggregator hands every silo the secrets it reconstructed; the silo expands the correction itself
    and checks each secret against its owner's signed advert first. Without those checks, any 32 bytes
    passed off as a self seed would shift the decrypted sum (and with every slot of the consortium in use,
    the lane range check cannot tell)."""
    members = make_members(4)
    _, _, sim = _round(4, 2, members=members, dropped={members[1].fingerprint})
    exact, _ = finish_round(sim, aggregator, 40)
    revealed = reveal(sim.statement, sim.responses, sim.roster, sim.threshold, sim.certificates).secrets
    correction = mask_correction(revealed, sim.roster, sim.graph, sim.w, 40)
    masked_sum = sum((s.masked for s in sim.silos.values() if s.masked is not None), np.zeros(40, dtype=np.uint64))
    assert np.array_equal(apply_correction(masked_sum, correction, sim.w), exact)
    survivor, dropped = sim.statement.contributors[0], sim.statement.dropped[0]
    seeds, keys = dict(revealed.self_seeds), dict(revealed.mask_keys)
    wrong_seed = {**seeds, survivor: bytes(32)}
    swapped = {**seeds, survivor: seeds[sim.statement.contributors[1]]}
    wrong_key = {dropped: X25519PrivateKey.generate().private_bytes_raw()}
    other = RoundContext("consortium-a", "job-1", 10)
    cases = {
        "does not match its commitment": RevealedSecrets(revealed.statement, wrong_seed, keys),
        "self seed of silo": RevealedSecrets(revealed.statement, swapped, keys),
        "does not match its advertisement": RevealedSecrets(revealed.statement, seeds, wrong_key),
        "exactly one self seed": RevealedSecrets(revealed.statement, {survivor: seeds[survivor]}, keys),
        "another session": RevealedSecrets(dataclasses.replace(revealed.statement, context=other), seeds, keys),
    }
    for reason, secrets in cases.items():
        with pytest.raises(UnmaskRefused, match=reason):
            mask_correction(secrets, sim.roster, sim.graph, sim.w, 40)
    # what travels: frozen encoding, bounded, round-trips; a record for a larger roster than the job's is refused
    encoded = encode_revealed(revealed)
    assert decode_revealed(encoded, 4) == revealed
    with pytest.raises(EncodingError, match="roster of 4"):
        decode_revealed(encoded, 3)
    with pytest.raises(EncodingError):
        decode_revealed(encoded[:-1], 4)
