"""The silo's side of a round: share its secrets with its holders, then mask its vector.

A silo's masked vector is (x + PRG(self seed) + sum over peers p of sign(me, p) * PRG(seed(me, p)))
mod 2^w, where sign is + when me sorts before p (by fingerprint) and - otherwise, so every pairwise
mask appears once with each sign in the sum over the contributors and cancels exactly mod 2^w.
Each masked value alone is uniform in [0, 2^w) (one-time pad), whatever x is.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.errors import ValueRangeError
from crypto.secagg.encoding import RoundContext
from crypto.secagg.errors import SecAggError
from crypto.secagg.keys import Roster, RoundKeys, pairwise_seed
from crypto.secagg.prg import add_stream, check_width
from crypto.secagg.shamir import split
from crypto.secagg.transport import ShareEnvelope, seal_shares


def share_secrets(
    context: RoundContext,
    keys: RoundKeys,
    me: str,
    roster: Roster,
    holders: Iterable[str],
    threshold: int,
    signing_key: ec.EllipticCurvePrivateKey,
) -> list[ShareEnvelope]:
    """t-of-|holders| shares of the self seed and of the mask private key, one envelope per holder."""
    targets = sorted(set(holders) & set(roster.members) - {me})
    if len(targets) < threshold:
        raise SecAggError(
            f"only {len(targets)} share holders advertised keys this round, threshold {threshold}: "
            "wait for more silos or skip the round"
        )
    xs = [roster.x_of(h) for h in targets]
    self_shares = split(keys.self_seed, threshold, xs)
    mask_shares = split(keys.mask_private_bytes(), threshold, xs)
    return [
        seal_shares(context, keys, me, roster.advert(h), s, m, signing_key)
        for h, s, m in zip(targets, self_shares, mask_shares, strict=True)
    ]


def check_values(values: np.ndarray, w: int) -> np.ndarray:
    """The update as uint64, refusing anything outside [0, 2^w): a wrapped value would corrupt the sum."""
    check_width(w)
    array = np.asarray(values)
    if array.ndim != 1 or array.dtype.kind not in "ui":
        raise ValueRangeError("secure aggregation masks a one-dimensional integer vector")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= 1 << w):
        raise ValueRangeError(f"values must lie in [0, 2^{w}); quantize and offset before masking")
    return array.astype(np.uint64, copy=False)


def mask_vector(
    values: np.ndarray, w: int, context: RoundContext, keys: RoundKeys, me: str, roster: Roster,
    mask_set: Iterable[str], threshold: int,
) -> np.ndarray:  # fmt: skip
    """(values + self mask + signed pairwise masks with ``mask_set``) mod 2^w, in a new vector.

    ``mask_set`` is the set of graph neighbours whose shares this silo received and opened this
    round; it must hold at least ``threshold`` silos, or the silo refuses to contribute (with too
    few peers, revealing its self mask later would leave only masks a small coalition knows).
    The pairwise mask with peer p is + PRG(seed(me, p)) when ``me`` sorts before p, - otherwise.
    """
    x = check_values(values, w).copy()
    return apply_pad(x, mask_pad(x.shape[0], w, context, keys, me, roster, mask_set, threshold), w)


def mask_pad(
    length: int, w: int, context: RoundContext, keys: RoundKeys, me: str, roster: Roster,
    mask_set: Iterable[str], threshold: int,
) -> np.ndarray:  # fmt: skip
    """The whole mask of one upload of ``length`` values, mod 2^w: :func:`mask_vector` of a zero vector.

    It depends only on the session's keys, so a silo expands it while it trains (the AES keystreams
    are most of a masking's cost) and :func:`apply_pad` adds it to the update once it is trained.
    """
    check_width(w)
    peers = sorted(set(mask_set) - {me})
    if len(peers) < threshold:
        raise SecAggError(f"only {len(peers)} peers to mask with, threshold {threshold}: refusing to contribute")
    total = np.zeros(length, dtype=np.uint64)
    add_stream(total, keys.self_seed)
    for peer in peers:
        seed = pairwise_seed(context, keys.mask_private, me, keys.mask_public(), roster.advert(peer))
        add_stream(total, seed, subtract=me > peer)
    total &= np.uint64((1 << w) - 1)
    return total


def apply_pad(values: np.ndarray, pad: np.ndarray, w: int) -> np.ndarray:
    """(values + pad) mod 2^w, written into ``values`` when it already is a uint64 vector (the caller's own).

    Same result as :func:`mask_vector` with the keys the pad was expanded from; a pad of another
    length is refused (it was expanded for another model).
    """
    x = check_values(values, w)
    if pad.dtype != np.uint64 or pad.shape != x.shape:
        raise SecAggError(f"the mask pad holds {pad.shape[0]} values, the update {x.shape[0]}: expand it again")
    np.add(x, pad, out=x)
    x &= np.uint64((1 << w) - 1)
    return x
