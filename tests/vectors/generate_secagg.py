"""Regenerate tests/vectors/secagg.json — ONLY when a secure-aggregation format change is intended.

Silos and aggregators of different versions must agree on these bytes (signed advertisements,
statements, the PRG expansion of a seed and the pairwise seed derivation); tests/test_secagg.py
recomputes each from the frozen inputs. Bump the version tag in crypto/secagg before regenerating
(`python -m tests.vectors.generate_secagg`) and say so in the commit message.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.secagg.encoding import RoundContext
from crypto.secagg.keys import Advertisement, RoundKeys, pairwise_seed
from crypto.secagg.prg import expand
from crypto.secagg.unmask import ContributorStatement, RevealedSecrets
from crypto.secagg.wire import encode_revealed
from protocol.secagg import UnmaskingRecord, encode_unmasking

OUT = Path(__file__).with_name("secagg.json")


def build() -> dict[str, object]:
    context = {"consortium": "vectors", "job": "study-abc123", "round": 7}
    ctx = RoundContext(**context)
    roster = ["11" * 32, "22" * 32, "33" * 32]
    sender = roster[0]
    advert = Advertisement(ctx, sender, bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96)))
    statement = ContributorStatement.make(ctx, roster, roster[:2])
    secrets = RevealedSecrets(statement, {roster[0]: bytes(range(32)), roster[1]: bytes([5]) * 32}, {roster[2]: bytes([7]) * 32})
    revealed = encode_revealed(secrets)
    cases = []
    for seed, length, w in ((bytes(32), 8, 16), (bytes(range(32)), 8, 62), (b"\xff" * 32, 5, 1)):
        cases.append(
            {"seed": seed.hex(), "length": length, "w": w, "expected": [int(x) for x in expand(seed, length, w)]}
        )
    a_private = bytes([7] * 32)
    b_private = bytes([9] * 32)
    a_key = X25519PrivateKey.from_private_bytes(a_private)
    b_key = X25519PrivateKey.from_private_bytes(b_private)
    b_public = RoundKeys(b_key, b_key, bytes(32)).mask_public()
    peer = Advertisement(ctx, roster[1], b_public, bytes(32), bytes(32))
    seed = pairwise_seed(ctx, a_key, roster[0], RoundKeys(a_key, a_key, bytes(32)).mask_public(), peer)
    return {
        "encodings": {
            "context": context,
            "context_hex": ctx.encode().hex(),
            "sender": sender,
            "mask_public": advert.mask_public.hex(),
            "share_public": advert.share_public.hex(),
            "commit": advert.seed_commitment.hex(),
            "advert_signed_hex": advert.signed_bytes().hex(),
            "roster": roster,
            "contributors": roster[:2],
            "statement_hex": statement.encode().hex(),
            "revealed_hex": revealed.hex(),  # self seeds of roster[0], roster[1] (bytes 0..31, 05 * 32); key 07 * 32
            "unmasking_hex": encode_unmasking(UnmaskingRecord(b"roster-bytes", secrets)).hex(),
        },
        "prg": {"algorithm": "AES-256-CTR, zero IV, little-endian uint64 words mod 2^w", "cases": cases},
        "pairwise_seed": {
            "a": roster[0],
            "a_private": a_private.hex(),
            "b": roster[1],
            "b_public": b_public.hex(),
            "expected": seed.hex(),
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT}")
