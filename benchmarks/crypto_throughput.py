"""Encrypted weighted-sum throughput and wire size: cipherfed's engine vs TenSEAL ckks_vector.

Same data for both: each silo's update is drawn from N(0, 0.05) and weighted by a sample count
between 100 and 1,000. The baseline is TenSEAL's high-level ``ckks_vector`` with NVIDIA FLARE's
default parameters (N=8192, [60, 40, 40], scale 2^40). Everything runs on one core in one process.

    python -m benchmarks.crypto_throughput --params 1000000 --silos 8 --json OUT
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import tenseal as ts

from benchmarks.common import emit, machine
from crypto.engine import SumEncryptor, accumulate_batches, decrypt_weighted_mean, encrypt_weighted_update
from crypto.keys import generate_key_set, load_public_context

DECRYPT_REPEATS = 5  # decryption of one aggregate is short; report the median of a few runs


def _median_seconds(fn: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(DECRYPT_REPEATS):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def _data(params: int, silos: int, seed: int) -> tuple[list[np.ndarray], list[float], np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, 0.05, params) for _ in range(silos)]
    weights = [float(rng.integers(100, 1001)) for _ in range(silos)]
    mean = np.sum([u * w for u, w in zip(updates, weights, strict=True)], axis=0) / sum(weights)
    return updates, weights, mean


def bench_engine(updates: list[np.ndarray], weights: list[float], mean: np.ndarray) -> dict[str, Any]:
    params = updates[0].shape[0]
    keys = generate_key_set("sum")
    public = load_public_context(keys.export_public())
    encryptor = SumEncryptor(keys)
    t0 = time.perf_counter()
    batches = [encrypt_weighted_update(encryptor, {"update": u}, w) for u, w in zip(updates, weights, strict=True)]
    encrypt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    acc = accumulate_batches(public, keys.fingerprint, batches)
    aggregate_s = time.perf_counter() - t0
    aggregate = acc.serialize()
    manifest, upload_bytes = batches[0].manifest, batches[0].nbytes
    del batches, acc  # a silo decrypting the aggregate holds only the aggregate, not 8 uploads
    decrypt_s, result = _median_seconds(lambda: decrypt_weighted_mean(encryptor, manifest, aggregate))
    silos = len(updates)
    return {
        "upload_bytes_per_param": upload_bytes / params,
        "aggregate_bytes_per_param": sum(len(c) for c in aggregate) / params,
        "encrypt_params_per_s": silos * params / encrypt_s,
        "aggregate_params_per_s": silos * params / aggregate_s,
        "decrypt_params_per_s": params / decrypt_s,
        "max_abs_error": float(np.abs(result.tensors["update"] - mean).max()),
    }


def bench_baseline(updates: list[np.ndarray], weights: list[float], mean: np.ndarray) -> dict[str, Any]:
    params = updates[0].shape[0]
    context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40])
    context.global_scale = 2.0**40
    public = ts.context_from(context.serialize(save_secret_key=False))
    slots = 4096
    t0 = time.perf_counter()
    uploads: list[list[bytes]] = []
    for u, w in zip(updates, weights, strict=True):
        vec = np.append(u * w, w)
        uploads.append(
            [ts.ckks_vector(context, vec[i : i + slots].tolist()).serialize() for i in range(0, vec.shape[0], slots)]
        )
    encrypt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sums: list[Any] = [ts.ckks_vector_from(public, c) for c in uploads[0]]
    for upload in uploads[1:]:
        for i, c in enumerate(upload):
            sums[i].add_(ts.ckks_vector_from(public, c))  # in place: no per-update copy
    aggregate_s = time.perf_counter() - t0
    aggregate = [s.serialize() for s in sums]
    decrypt_s, decrypted = _median_seconds(
        lambda: np.concatenate([np.asarray(ts.ckks_vector_from(context, c).decrypt()) for c in aggregate])
    )
    total = decrypted[params]
    silos = len(updates)
    return {
        "upload_bytes_per_param": sum(len(c) for c in uploads[0]) / params,
        "aggregate_bytes_per_param": sum(len(c) for c in aggregate) / params,
        "encrypt_params_per_s": silos * params / encrypt_s,
        "aggregate_params_per_s": silos * params / aggregate_s,
        "decrypt_params_per_s": params / decrypt_s,
        "max_abs_error": float(np.abs(decrypted[:params] / total - mean).max()),
        "parameters": "N=8192, coeff [60,40,40], scale 2^40 (NVIDIA FLARE default), tenseal.ckks_vector",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--silos", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--no-baseline", action="store_true", help="measure only cipherfed's engine")
    args = parser.parse_args(argv)
    updates, weights, mean = _data(args.params, args.silos, args.seed)
    result: dict[str, Any] = {
        "benchmark": "crypto_throughput",
        "params": args.params,
        "silos": args.silos,
        "engine": "profile sum: tenseal.sealapi, N=8192, coeff [60,40], scale 2^40, complex packing, seeded symmetric",
        "machine": machine(),
        "timing": f"encrypt and aggregate: one pass over all silos; decrypt: median of {DECRYPT_REPEATS} runs",
        **bench_engine(updates, weights, mean),
    }
    if not args.no_baseline:
        result["baseline"] = bench_baseline(updates, weights, mean)
    emit(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
