"""Exact-integer headroom of one CKKS real in the seeded profile, measured as a function of the scale.

The ``compact`` profile packs integer lanes into CKKS reals and needs the decrypted, rounded sum of
up to 64 contributions to equal the integer sum exactly. Two limits decide how many integer bits a
real can carry at scale 2^S:

- the modulus: a plaintext coefficient of a complex-packed slot is at most sqrt(2) * max|real| *
  2^S, and must stay below q/2 (q: the 60-bit data prime), so |X| < q / (2^(S+1.5));
- the noise: encryption noise, encoding rounding and SEAL's double-precision FFT leave an absolute
  error on every decoded real; after summing n ciphertexts it must stay well below 1/2.

For each scale and each contributor count this script encrypts worst-case data (random integers
filling the modulus limit, and the constant pattern that puts the whole magnitude into one
coefficient), sums the ciphertexts, decrypts, and reports the largest absolute error on any real.
It then names the smallest scale whose error, times SAFETY_FACTOR, stays below
the integer-check tolerance, and the exact-integer range that scale leaves (``exact_integer_bits``:
every integer of magnitude <= 2^bits decodes exactly). ``crypto/lanes.py`` copies those numbers.

    python -m benchmarks.lane_headroom --json OUT
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from benchmarks.common import emit, machine
from crypto.engine import Accumulator
from crypto.keys import PublicContext, generate_key_set
from crypto.seal_io import load_ciphertext
from crypto.seal_reals import SeededRealCodec

# A decoded real is accepted as an integer when it is within 1/4 of one (crypto/lanes.py), and the
# measured worst error must sit SAFETY_FACTOR times below that tolerance (24x below the rounding
# threshold 1/2). The error hardly depends on the scale (about 2^12.9 / 2^S after 64 sums), so a
# power-of-two factor would put the limit right at a measured value and the choice of scale would
# flip from run to run; 12 leaves the chosen scale ~1.4x inside the limit and the next one ~1.4x out.
INTEGER_TOLERANCE = 0.25
SAFETY_FACTOR = 12


def _modulus_bits(data_prime: int, scale_bits: int) -> int:
    """Largest K with sqrt(2) * 2^K * 2^S < q/2: the modulus limit on |X| (noise is measured apart).

    A coefficient of the encoded polynomial is an average over the N slot values and their
    conjugates, so its magnitude is at most max|slot| * 2^S, and a complex slot holding two reals
    of magnitude <= 2^K has |slot| <= sqrt(2) * 2^K. Noise (~2^13 after 64 sums) is 2^44 below the
    gap between 2^(K+S+0.5) and q/2 at these sizes, so it cannot push a coefficient across q/2.
    """
    bits = math.floor(math.log2(data_prime / 2) - 0.5 - scale_bits)
    while math.sqrt(2) * 2.0 ** (bits + scale_bits) >= data_prime / 2:
        bits -= 1
    return bits


def _contributions(rng: np.random.Generator, pattern: str, count: int, reals: int, peak: int) -> list[np.ndarray]:
    """``count`` integer vectors whose sum reaches magnitude ``peak`` (never beyond it)."""
    each = peak // count
    if pattern == "constant":
        return [np.full(reals, float(each)) for _ in range(count)]
    return [rng.integers(-each, each + 1, reals).astype(np.float64) for _ in range(count)]


def measure(scales: list[int], counts: list[int], chunks: int, seed: int) -> dict[str, Any]:
    keys = generate_key_set("sum")  # the compact profile uses the same SEAL parameters
    codec = SeededRealCodec(keys)
    context = keys.public.seal_context
    assert context is not None
    data_prime = int(context.first_context_data().parms().coeff_modulus()[0].value())
    rng = np.random.default_rng(seed)
    reals = chunks * codec.reals_per_ciphertext
    rows = []
    for scale_bits in scales:
        peak_bits = _modulus_bits(data_prime, scale_bits)
        peak = 2**peak_bits
        errors: dict[str, float] = {}
        for count in counts:
            worst = 0.0
            for pattern in ("random", "constant"):
                contributions = _contributions(rng, pattern, count, reals, peak)
                total = np.sum(contributions, axis=0)
                decoded = _encrypted_sum(codec, keys.public, contributions, scale_bits)
                worst = max(worst, float(np.abs(decoded[:reals] - total).max()))
            errors[str(count)] = worst
        rows.append(
            {
                "scale_bits": scale_bits,
                "modulus_limit_bits": peak_bits,
                "max_abs_error": errors,
                "max_abs_error_scaled_log2": {k: _log2(v) + scale_bits for k, v in errors.items()},
            }
        )
    return {"data_prime_bits": data_prime.bit_length(), "rows": rows}


def _encrypted_sum(
    codec: SeededRealCodec, public: PublicContext, contributions: list[np.ndarray], scale_bits: int
) -> np.ndarray:
    """Encrypt each contribution, add the ciphertexts as the aggregator does, decrypt the sum."""
    encrypted = [codec.encrypt(vector, scale_bits) for vector in contributions]
    accumulator = Accumulator(public, len(encrypted[0]))
    for chunks in encrypted:
        for index, chunk in enumerate(chunks):
            accumulator.add(index, load_ciphertext(public.seal_context, chunk))
    return codec.decrypt(accumulator.serialize())


def _log2(value: float) -> float:
    return math.log2(value) if value > 0 else -math.inf


def recommend(result: dict[str, Any], contributors: int) -> dict[str, Any]:
    """Smallest scale whose worst error on a sum of ``contributors`` ciphertexts is safely small."""
    limit = INTEGER_TOLERANCE / SAFETY_FACTOR
    for row in sorted(result["rows"], key=lambda r: r["scale_bits"]):
        if row["max_abs_error"][str(contributors)] <= limit:
            return {
                "scale_bits": row["scale_bits"],
                "exact_integer_bits": row["modulus_limit_bits"],
                "max_abs_error": row["max_abs_error"][str(contributors)],
                "error_limit": limit,
                "for_contributors": contributors,
            }
    return {"scale_bits": None, "exact_integer_bits": None, "for_contributors": contributors, "error_limit": limit}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="14,16,17,18,19,20,21,22,24,28,32,40", help="comma-separated scale bits")
    parser.add_argument("--counts", default="1,2,8,16,64", help="comma-separated numbers of summed ciphertexts")
    parser.add_argument("--chunks", type=int, default=4, help="ciphertexts per contribution (N reals each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    counts = [int(c) for c in args.counts.split(",")]
    t0 = time.perf_counter()
    measured = measure(scales, counts, args.chunks, args.seed)
    result: dict[str, Any] = {
        "benchmark": "lane_headroom",
        "engine": "tenseal.sealapi, N=8192, coeff [60,40], complex packing, seeded symmetric",
        "machine": machine(),
        "reals_per_contribution": args.chunks * 8192,
        "patterns": ["random integers up to the modulus limit", "constant at the modulus limit"],
        "integer_tolerance": INTEGER_TOLERANCE,
        "safety_factor": SAFETY_FACTOR,
        **measured,
        "recommended": recommend(measured, max(counts)),
        "seconds": time.perf_counter() - t0,
    }
    emit(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
