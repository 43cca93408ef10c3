"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

Why a prime field just above 2^256: every 32-byte secret (a self-mask seed, a raw X25519 private
key) is one field element, so a share is one evaluation (x, y) of 2 + 33 bytes and reconstruction
is one Lagrange interpolation at zero with Python integers: simpler to get right than byte-wise
GF(2^8) and as fast at our sizes (tens of holders). 2^256 + 297 is the smallest prime above 2^256
(checked by a Miller-Rabin test in tests/test_secagg.py). Coefficients are drawn with ``secrets``;
x coordinates are public, distinct and non-zero (1 + the holder's index in the sorted roster).

Shares are not authenticated by themselves: callers check the reconstructed secret against a
public commitment (see ``reconstruct_checked``) so a wrong share is detected, never silently used.
"""

from __future__ import annotations

import itertools
import secrets
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from crypto.secagg.errors import EncodingError, ReconstructionError

PRIME = (1 << 256) + 297
SECRET_BYTES = 32
_Y_BYTES = 33
MAX_HOLDERS = 4096
MAX_SUBSETS = 256


@dataclass(frozen=True)
class Share:
    x: int
    y: int

    def __post_init__(self) -> None:
        if not 1 <= self.x <= MAX_HOLDERS or not 0 <= self.y < PRIME:
            raise EncodingError(f"share out of range (x must be in [1, {MAX_HOLDERS}], y in the field)")

    def to_bytes(self) -> bytes:
        return struct.pack(">H", self.x) + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != 2 + _Y_BYTES:
            raise EncodingError(f"a share is {2 + _Y_BYTES} bytes, got {len(data)}")
        return cls(struct.unpack(">H", data[:2])[0], int.from_bytes(data[2:], "big"))


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` at the given x coordinates; any ``threshold`` of them recover it."""
    if len(secret) != SECRET_BYTES:
        raise ReconstructionError(f"only {SECRET_BYTES}-byte secrets are shared")
    if len(set(xs)) != len(xs) or any(not 1 <= x <= MAX_HOLDERS for x in xs):
        raise ReconstructionError("share x coordinates must be distinct and in [1, 4096]")
    if not 1 <= threshold <= len(xs):
        raise ReconstructionError(f"threshold {threshold} must be between 1 and the {len(xs)} holders")
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def _interpolate_at_zero(shares: Sequence[Share]) -> int:
    total = 0
    for i, si in enumerate(shares):
        num, den = 1, 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (-sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        total = (total + si.y * num * pow(den, -1, PRIME)) % PRIME
    return total


def reconstruct(shares: Sequence[Share], threshold: int) -> bytes:
    """The secret from the first ``threshold`` shares with distinct x; fewer than that is refused."""
    distinct: dict[int, Share] = {}
    for share in shares:
        if share.x in distinct and distinct[share.x] != share:
            raise ReconstructionError(f"two different shares claim x = {share.x}")
        distinct.setdefault(share.x, share)
    if len(distinct) < threshold:
        raise ReconstructionError(
            f"{len(distinct)} distinct shares received, {threshold} needed: wait for more survivors or fail the round"
        )
    value = _interpolate_at_zero(list(distinct.values())[:threshold])
    if value >= 1 << (8 * SECRET_BYTES):
        raise ReconstructionError("the shares interpolate to a value that is not a 32-byte secret (a share is wrong)")
    return value.to_bytes(SECRET_BYTES, "big")


def reconstruct_checked(
    shares: Sequence[Share], threshold: int, is_right: Callable[[bytes], bool]
) -> tuple[bytes, list[int]]:
    """The secret whose public check passes, and the x coordinates of shares that disagree with it.

    Tries subsets of ``threshold`` shares (at most MAX_SUBSETS of them) until the reconstructed
    secret passes ``is_right`` (its advertised commitment or public key). If the first subset was
    wrong, it then names every share not on the right polynomial, so a silo that answered with a
    wrong share is identified for the audit; a wrong share outside the first subset changes
    nothing and is not looked for.
    """
    distinct = {s.x: s for s in shares}
    if len(distinct) < threshold:
        raise ReconstructionError(
            f"{len(distinct)} distinct shares received, {threshold} needed: wait for more survivors or fail the round"
        )
    ordered = sorted(distinct.values(), key=lambda s: s.x)
    for attempt, subset in enumerate(itertools.islice(itertools.combinations(ordered, threshold), MAX_SUBSETS)):
        value = _interpolate_at_zero(subset)
        if value >= 1 << (8 * SECRET_BYTES):
            continue
        secret = value.to_bytes(SECRET_BYTES, "big")
        if is_right(secret):
            # honest path: the first subset is right and nothing is checked further (O(t^2) saved
            # per extra share); after a wrong answer, every share is checked and the liars named
            return secret, ([] if attempt == 0 else _disagreeing(ordered, subset))
    raise ReconstructionError(
        f"no {threshold} of the {len(ordered)} shares reconstruct a secret matching its public commitment"
    )


def _disagreeing(shares: Sequence[Share], basis: Sequence[Share]) -> list[int]:
    """x of each share that is not on the polynomial through ``basis``."""
    bad = []
    for s in shares:
        if s in basis:
            continue
        y = 0
        for i, si in enumerate(basis):
            num, den = 1, 1
            for j, sj in enumerate(basis):
                if i != j:
                    num = num * (s.x - sj.x) % PRIME
                    den = den * (si.x - sj.x) % PRIME
            y = (y + si.y * num * pow(den, -1, PRIME)) % PRIME
        if y != s.y:
            bad.append(s.x)
    return bad
