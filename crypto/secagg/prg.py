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


_BLOCK_WORDS = 1 << 15  # keystream words per AES call: 256 KiB, stays in cache while it is added


def expand(seed: bytes, length: int, w: int) -> np.ndarray:
    """``length`` integers uniform in [0, 2^w), as uint64, from the AES-256-CTR keystream of ``seed``."""
    check_width(w)
    words = np.zeros(_check_length(length), dtype=np.uint64)
    add_stream(words, seed)
    words &= np.uint64((1 << w) - 1)
    return words


def add_stream(total: np.ndarray, seed: bytes, subtract: bool = False) -> None:
    """``total`` += (or -=) the keystream words of ``seed``, mod 2^64, in place.

    Reduce mod 2^w once after the last stream: 2^w divides 2^64, so the result equals the sum of
    :func:`expand` vectors. The keystream is made block by block into one small buffer and added
    from there, so a 1M-word mask touches only ``total``: about 2.5x faster than expanding each
    stream into a vector of its own (page faults and memory traffic, not AES, dominated that).
    """
    if len(seed) != 32:
        raise SecAggError("a mask seed is exactly 32 bytes")
    if not isinstance(total, np.ndarray) or total.dtype != np.uint64 or total.ndim != 1:
        raise SecAggError("masks are added into a one-dimensional uint64 vector")
    length = total.shape[0]
    _check_length(length)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
    block = max(1, min(length, _BLOCK_WORDS))
    zeros = bytes(8 * block)
    # update_into needs room for one extra block minus a byte: two spare words
    stream = np.empty(block + 2, dtype="<u8")
    out = stream.data.cast("B")
    combine = np.subtract if subtract else np.add
    for start in range(0, length, block):
        n = min(block, length - start)
        if encryptor.update_into(zeros[: 8 * n], out) != 8 * n:
            raise SecAggError("AES-CTR keystream came out short")
        part = total[start : start + n]
        combine(part, stream[:n].view(np.uint64), out=part)
    if encryptor.finalize():
        raise SecAggError("AES-CTR keystream came out short")


def _check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= MAX_LENGTH:
        raise SecAggError(f"mask length must be an integer in [0, {MAX_LENGTH}]")
    return length
