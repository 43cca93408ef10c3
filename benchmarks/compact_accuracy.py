"""Accuracy of the ``compact`` profile's weighted mean against float64, through real encryption.

For each consortium size, weight spread, weight cap (as a multiple of the largest silo's weight),
clipping bound and bit width: every silo draws an update (N(0, 0.05), or a heavier-tailed
Student-t with 3 degrees of freedom scaled to the same spread), weights it by its sample count,
and the silos' contributions are quantized, encrypted, summed and decrypted with the compact
profile. Reported per configuration: the largest and RMS absolute error of the decrypted mean
against the float64 weighted mean of the *unclipped* updates (clipping bias plus rounding), the
RMS error against the float64 mean of the *clipped* updates (rounding alone), the RMS error
relative to the spread of the mean itself, the number of clipped values, and the error predicted from the
quantization step alone (step * W * sqrt(sum_i p_i (1 - p_i)) / sum_i w_i <= step * W * sqrt(n) /
(2 * sum_i w_i)).

    python -m benchmarks.compact_accuracy --json OUT
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

from benchmarks.common import emit, machine
from crypto.compact import CompactEncryptor, CompactParams, default_bits
from crypto.engine import accumulate_batches
from crypto.keys import generate_key_set, load_public_context

SPREAD = 0.05
WEIGHT_SPREADS = {
    "uniform-100-1000": lambda rng, n: rng.integers(100, 1001, n),
    "one-large": lambda rng, n: np.array([5000] + [int(x) for x in rng.integers(200, 801, n - 1)]),
}


def _updates(rng: np.random.Generator, kind: str, silos: int, params: int) -> list[np.ndarray]:
    if kind == "normal":
        return [rng.normal(0, SPREAD, params) for _ in range(silos)]
    # Student-t(3) has variance 3: scale to the same standard deviation as the normal case.
    return [rng.standard_t(3, params) * SPREAD / math.sqrt(3) for _ in range(silos)]


def run_case(
    keys: Any, public: Any, rng: np.random.Generator, case: dict[str, Any], params: int, max_silos: int
) -> dict[str, Any]:
    silos, bits, bound = case["silos"], case["bits"], case["bound"]
    weights = [int(w) for w in WEIGHT_SPREADS[case["weights"]](rng, silos)]
    cap = math.ceil(case["cap_factor"] * max(weights))
    updates = _updates(rng, case["distribution"], silos, params)
    total = sum(weights)
    expected = sum(u * w for u, w in zip(updates, weights, strict=True)) / total
    clipped_mean = sum(np.clip(u, -bound, bound) * w for u, w in zip(updates, weights, strict=True)) / total
    encryptor = CompactEncryptor(keys, CompactParams(bits, bound, max_silos, cap))
    batches = [encryptor.encrypt_update({"u": u}, w) for u, w in zip(updates, weights, strict=True)]
    aggregate = accumulate_batches(public, keys.fingerprint, batches).serialize()
    result = encryptor.decrypt_mean(batches[0].manifest, aggregate)
    error = result.tensors["u"] - expected
    rms = float(np.sqrt(np.mean(error**2)))
    return {
        **case,
        "weight_list": weights,
        "weight_cap": cap,
        "max_abs_error": float(np.abs(error).max()),
        "rms_error": rms,
        "rms_error_relative_to_mean_spread": rms / float(np.std(expected)),
        # the quantization alone: against the float64 mean of the clipped updates
        "rms_error_vs_clipped_mean": float(np.sqrt(np.mean((result.tensors["u"] - clipped_mean) ** 2))),
        "predicted_rms_bound": encryptor.params.step * cap * math.sqrt(silos) / (2 * total),
        "clipped_values": sum(b.clipped for b in batches),
        "clipped_fraction": sum(b.clipped for b in batches) / (silos * params),
    }


def cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for silos in args.silos:
        for weights in args.weights:
            for cap_factor in args.caps:
                for bound in args.bounds:
                    for distribution in args.distributions:
                        for bits in args.bits or [default_bits(args.max_silos)]:
                            out.append(
                                {
                                    "silos": silos,
                                    "weights": weights,
                                    "cap_factor": cap_factor,
                                    "bound": bound,
                                    "distribution": distribution,
                                    "bits": bits,
                                }
                            )
    return out


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=32760, help="values per silo (two ciphertexts by default)")
    parser.add_argument("--silos", type=_ints, default=[4, 8, 16])
    parser.add_argument("--max-silos", type=int, default=16, help="consortium size the lanes are sized for")
    parser.add_argument("--bits", type=_ints, default=None, help="default: the widest two-lane width for max-silos")
    parser.add_argument("--bounds", type=_floats, default=[0.25, 0.5, 1.0])
    parser.add_argument("--caps", type=_floats, default=[1.0, 2.0, 10.0], help="weight cap / largest weight")
    parser.add_argument("--weights", type=lambda t: t.split(","), default=list(WEIGHT_SPREADS))
    parser.add_argument("--distributions", type=lambda t: t.split(","), default=["normal", "t3"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    keys = generate_key_set("compact")
    public = load_public_context(keys.export_public())
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    rows = [run_case(keys, public, rng, case, args.params, args.max_silos) for case in cases(args)]
    result = {
        "benchmark": "compact_accuracy",
        "params": args.params,
        "max_silos": args.max_silos,
        "update_spread": SPREAD,
        "machine": machine(),
        "rows": rows,
        "worst_rms_error_relative": max(r["rms_error_relative_to_mean_spread"] for r in rows),
        "worst_rounding_rms_over_prediction": max(
            r["rms_error_vs_clipped_mean"] / r["predicted_rms_bound"] for r in rows
        ),
        "seconds": time.perf_counter() - t0,
    }
    emit(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
