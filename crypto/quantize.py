"""Clip-and-quantize real values to signed b-bit integers with unbiased stochastic rounding.

Why stochastic: rounding x/step up with probability equal to its fractional part makes the integer
an unbiased estimate of x/step, so the rounding errors of many silos and rounds average out instead
of accumulating a drift (QSGD, BatchCrypt). Why a CSPRNG: the rounding decisions are derived from
the update, and a predictable generator would let whoever knows the seed learn about the values
from the integers; a ChaCha20 keystream keyed by 32 bytes from ``secrets`` (or a seed passed in by a
test) gives decisions that are independent of everything else.

Clipping is never silent: every value beyond ±bound is set to ±bound and counted, and the caller
must record the count. Nothing ever wraps: the integers lie in [-(2^(b-1) - 1), 2^(b-1) - 1], a
symmetric range (the most negative two's-complement value is left out so that negation is safe and
the bound maps to ±(2^(b-1) - 1) exactly).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from crypto.errors import ValueRangeError

SEED_BYTES = 32
MIN_BITS = 2  # 1-bit signed has only 0
MAX_BITS = 32
# A job spec may come from a hostile coordinator: keep bound * 2^MAX_BITS and level / bound finite.
MIN_BOUND = 1e-12
MAX_BOUND = 1e12
# Values are processed in blocks so that the temporaries of each step stay in cache.
_BLOCK = 1 << 16


class UniformStream:
    """Uniform floats k / 2^32 (k uniform in 0..2^32-1) from a ChaCha20 keystream, 4 bytes each.

    32 bits are enough for unbiased rounding in practice: see :func:`quantize` for the bound.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        key = secrets.token_bytes(SEED_BYTES) if seed is None else seed
        if len(key) != SEED_BYTES:
            raise ValueRangeError(f"stochastic-rounding seed must be {SEED_BYTES} bytes, got {len(key)}")
        # A fresh key per stream, so the all-zero nonce (counter starting at 0) is never reused.
        self._cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def uniform(self, count: int) -> np.ndarray:
        words = np.frombuffer(self._cipher.update(bytes(4 * count)), dtype="<u4")
        return words * 2.0**-32


@dataclass(frozen=True)
class Quantized:
    """Signed integers (int64) and how many inputs were clipped to the bound to get them."""

    values: np.ndarray
    clipped: int


def max_level(bits: int) -> int:
    """Largest integer magnitude a b-bit quantized value takes: 2^(b-1) - 1."""
    return (1 << (bits - 1)) - 1


def check_quantizer(bits: int, bound: float) -> None:
    """Refuse bit widths and bounds that cannot give a meaningful, finite quantizer."""
    if isinstance(bits, bool) or isinstance(bound, bool):
        raise ValueRangeError("quantization bits and bound must be numbers, not booleans")
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueRangeError(f"quantization bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if not (isinstance(bound, float | int) and MIN_BOUND <= bound <= MAX_BOUND):
        raise ValueRangeError(f"quantization bound must be a number in {MIN_BOUND:g}..{MAX_BOUND:g}, got {bound!r}")


def quantize(values: np.ndarray, bound: float, bits: int, stream: UniformStream, factor: float = 1.0) -> Quantized:
    """Clip ``values`` to ±bound, multiply by ``factor`` (0 < factor <= 1), round stochastically.

    With x = factor * clip(v) / step (step = bound / (2^(b-1) - 1)) the result is floor(x + u)
    for a fresh uniform u: it is ceil(x) with probability frac(x) and floor(x) otherwise, so
    E[q] = x. Because u takes the values k / 2^32, the probability is frac(x) rounded to a multiple
    of 2^-32 (and x + u is rounded to a float64 of at least 2^-38 resolution for |x| < 2^15): the
    bias is below 2^-32 of one step, i.e. one step of drift after some 4 billion rounds. The
    factor lets a silo scale its update by its relative weight after clipping, so that the clip
    count refers to the update itself and |x| stays within 2^(b-1) - 1.
    """
    check_quantizer(bits, bound)
    if not (math.isfinite(factor) and 0 < factor <= 1):
        raise ValueRangeError(f"quantization factor must be in (0, 1], got {factor!r}")
    flat = np.asarray(values, dtype=np.float64).ravel()
    level = max_level(bits)
    scale = factor * level / bound
    out = np.empty(flat.shape[0], dtype=np.int64)
    clipped = 0
    for start in range(0, flat.shape[0], _BLOCK):
        block = flat[start : start + _BLOCK]
        low, high = float(block.min()), float(block.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueRangeError("update contains NaN or infinite values; refusing to quantize it")
        if low < -bound or high > bound:
            clipped += int(np.count_nonzero(block > bound)) + int(np.count_nonzero(block < -bound))
            block = np.clip(block, -bound, bound)
        scaled = block * scale
        scaled += stream.uniform(block.shape[0])
        np.floor(scaled, out=scaled)
        out[start : start + block.shape[0]] = scaled
    # |x| <= level up to a few ulps of float rounding and u <= 1 - 2^-32, so every floor is within
    # ±level; checked once here (cheap reductions) so that no later edit can make a value wrap.
    if out.size and (int(out.max()) > level or int(out.min()) < -level):
        raise ValueRangeError(f"quantized value outside ±{level}: internal error, refusing to encrypt")
    return Quantized(out, clipped)


def step(bound: float, bits: int) -> float:
    """Real value of one integer unit: bound / (2^(b-1) - 1)."""
    return bound / max_level(bits)
