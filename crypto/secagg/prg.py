"""Mask expansion: a 32-byte seed to a vector of uniform integers modulo 2^w.

AES-256-CTR keystream from ``cryptography`` (a PRF in counter mode), read as little-endian
unsigned 64-bit words and reduced modulo 2^w. Because 2^w divides 2^64, the reduction keeps every
residue exactly equally likely: no modulo bias. Each seed expands exactly one stream (seeds are
fresh per round and per pair), so the fixed all-zero counter block is never reused under one key.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.secagg.errors import SecAggError

MAX_WIDTH = 62
MAX_LENGTH = 1 << 28
_NONCE = bytes(16)


def check_width(w: int) -> int:
    """Mask modulus 2^w with 1 <= w <= 62 (callers keep two bits of uint64 headroom)."""
    if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WIDTH:
        raise SecAggError(f"mask width w must be an integer in [1, {MAX_WIDTH}] bits, got {w!r}")
    return w


def expand(seed: bytes, length: int, w: int) -> np.ndarray:
    """``length`` integers uniform in [0, 2^w), as uint64, from the AES-256-CTR keystream of ``seed``."""
    check_width(w)
    if len(seed) != 32:
        raise SecAggError("a mask seed is exactly 32 bytes")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise SecAggError(f"mask length must be an integer in [0, {MAX_LENGTH}]")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
    zeros = bytes(8 * length)
    # update_into needs room for one extra block minus a byte: two spare words
    out = np.empty(length + 2, dtype="<u8")
    written = encryptor.update_into(zeros, out.data.cast("B"))
    if written != 8 * length or encryptor.finalize():
        raise SecAggError("AES-CTR keystream came out short")
    words = out[:length].astype(np.uint64, copy=False)
    words &= np.uint64((1 << w) - 1)
    return words
