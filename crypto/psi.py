"""Private set intersection by commutative blinding over X25519 (ECDH-PSI).

Each id is normalised (Unicode NFKC, surrounding and repeated whitespace removed, case folded) and
hashed with a domain-separated SHA-256 to 32 bytes, used as an X25519 u-coordinate. A party blinds
with its own scalar: X25519(a, H(id)). Blinding commutes — X25519(a, X25519(b, P)) equals
X25519(b, X25519(a, P)) — so two parties can compare doubly blinded values without either seeing the
other's ids, and the relay in between sees only blinded points. Blinded lists are shuffled before
they leave a party, so positions reveal nothing either.
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from crypto.errors import CryptoError

_SPACES = re.compile(r"\s+")


class PsiError(CryptoError):
    """The sets cannot be aligned: duplicates, empty or too small an intersection."""


def normalize_id(raw: object) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", str(raw))).strip().casefold()


def hash_id(normalized: str, domain: str) -> bytes:
    return hashlib.sha256(b"cipherfed-psi-v1\x00" + domain.encode() + b"\x00" + normalized.encode()).digest()


def blind_many(key: X25519PrivateKey, points: list[bytes]) -> list[bytes]:
    """X25519 with this party's scalar on each point (same order)."""
    exchange = key.exchange
    load = X25519PublicKey.from_public_bytes
    try:
        return [exchange(load(p)) for p in points]
    except ValueError as exc:  # malformed length or a low-order point (never from honest hashing)
        raise PsiError(f"a blinded value is not a valid X25519 point: {exc}") from None


@dataclass
class PsiParty:
    """One party's side: its ids, its secret scalar, and the shuffle of what it sent."""

    ids: list[str]
    domain: str

    def __post_init__(self) -> None:
        normalized = [normalize_id(i) for i in self.ids]
        seen: dict[str, int] = {}
        duplicates = []
        for row, n in enumerate(normalized):
            if n in seen:
                duplicates.append(n)
            seen[n] = row
        if duplicates:
            raise PsiError(
                f"{len(duplicates)} duplicated id(s) after normalisation (for example {duplicates[0]!r}); "
                f"each entity must appear once"
            )
        if not normalized:
            raise PsiError("no ids to align")
        self._key = X25519PrivateKey.generate()
        self._hashes = [hash_id(n, self.domain) for n in normalized]
        self.order = list(range(len(normalized)))
        random.SystemRandom().shuffle(self.order)  # position i of what we send is our row order[i]

    def blinded(self) -> list[bytes]:
        """Our ids, blinded by us, in shuffled order."""
        return blind_many(self._key, [self._hashes[row] for row in self.order])

    def blind(self, points: list[bytes]) -> list[bytes]:
        """The other party's blinded values, blinded by us too (order kept)."""
        return blind_many(self._key, points)


def match(ours_double: list[bytes], theirs_double: list[bytes]) -> dict[int, int]:
    """Positions that agree: our sent position -> their sent position."""
    index = {value: pos for pos, value in enumerate(theirs_double)}
    return {pos: index[value] for pos, value in enumerate(ours_double) if value in index}
