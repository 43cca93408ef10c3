"""Wall time of a federated round with HE (profile sum) vs without (profile none), same job.

4 silo processes and the aggregator over mTLS on 127.0.0.1, a torch MLP of about 1M parameters
(100 -> 2048 -> 400 -> 1), synthetic data, 3 rounds each. A round's wall time is from the moment it
opens to the moment its aggregate is released, so it includes each silo's download, decryption and
application of the previous aggregate, local training, encryption and upload. Round 0 is left out
of the averages (it includes process warm-up).

    python -m benchmarks.round_overhead --json OUT
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, machine
from cipherfed.localconsortium import LocalConsortium, job_toml
from protocol import cipherfed_pb2 as pb


def _cpu_seconds(c: LocalConsortium) -> dict[str, float]:
    """CPU time (user + system) of each process so far, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for label, proc in c.processes.items():
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[label] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def _run_job(c: LocalConsortium, stub: Any, spec: str, timeout_s: float = 900) -> Any:
    job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    deadline = time.time() + timeout_s
    while True:
        status = stub.GetJobStatus(pb.JobRef(job_id=job), timeout=30)
        if status.status != "running":
            break
        if time.time() > deadline:
            raise TimeoutError(f"job {job} did not finish")
        time.sleep(0.2)
    if status.status != "completed":
        raise RuntimeError(f"job {job} {status.status}: {status.reason} (logs: {c.logs})")
    return status


def _measure(c: LocalConsortium, stub: Any, spec: str, params: int, silos: int) -> dict[str, Any]:
    before = _cpu_seconds(c)
    status = _run_job(c, stub, spec)
    after = _cpu_seconds(c)
    rounds = len(status.rounds)
    walls = [r.wall_s for r in status.rounds]
    steady = walls[1:] if len(walls) > 1 else walls
    upload = statistics.mean(r.bytes_in for r in status.rounds) / silos
    silo_cpu = sum(after[k] - before[k] for k in after if k != "aggregator") / silos / rounds
    return {
        "round_s": statistics.mean(steady),
        "round_s_each": [round(w, 3) for w in walls],
        "upload_bytes_per_param": upload / params,
        "cpu_s_per_round": {
            "per_silo": round(silo_cpu, 3),
            "aggregator": round((after["aggregator"] - before["aggregator"]) / rounds, 3),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--silos", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--hidden", default="2048,400", help="hidden layer sizes, comma separated")
    parser.add_argument("--rows", type=int, default=2000, help="records per silo")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    hidden = [int(h) for h in args.hidden.split(",")]
    sizes = [args.features, *hidden, 1]
    params = sum(a * b + b for a, b in itertools.pairwise(sizes))
    # One torch thread per process: 5 processes share the machine's cores in both modes alike.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cipherfed-bench-"))
    names = [f"silo-{i + 1}" for i in range(args.silos)]
    c = LocalConsortium(workdir, names)
    c.provision()
    rng = np.random.default_rng(0)
    true_w = rng.normal(size=args.features)
    columns = [f"x{i}" for i in range(args.features)]
    for name in names:
        x = rng.normal(size=(args.rows, args.features))
        y = (x @ true_w + rng.normal(size=args.rows) > 0).astype(np.int64)
        c.write_data(name, x, y, columns)
    model = f'type = "mlp"\nhidden = [{", ".join(map(str, hidden))}]'
    common: dict[str, Any] = dict(
        rounds=args.rounds,
        model=model,
        local_epochs=args.local_epochs,
        batch_size=64,
        lr=0.05,
        min_silos=args.silos,
        round_timeout_s=600,
    )
    try:
        stub = c.start_all()

        def spec_for(name: str, profile: str, rounds: int) -> str:
            spec = job_toml(name, names, c.fingerprint, columns, he_profile=profile, **{**common, "rounds": rounds})
            return spec.replace('scaling = "federated"', 'scaling = "none"')

        # Warm-up (excluded): process start-up, imports and first allocations in every node.
        _run_job(c, stub, spec_for("bench-warmup", "none", 1))
        results = {}
        for profile in ("none", "sum"):
            results[profile] = _measure(c, stub, spec_for(f"bench-{profile}", profile, args.rounds), params, args.silos)
    finally:
        c.stop_all()
    result = {
        "benchmark": "round_overhead",
        "silos": args.silos,
        "rounds": args.rounds,
        "model_parameters": params,
        "model": f"mlp {sizes}",
        "rows_per_silo": args.rows,
        "local_epochs": args.local_epochs,
        "machine": machine(),
        "plain_round_s": results["none"]["round_s"],
        "he_round_s": results["sum"]["round_s"],
        "ratio": results["sum"]["round_s"] / results["none"]["round_s"],
        "upload_bytes_per_param": {
            "he": results["sum"]["upload_bytes_per_param"],
            "plain": results["none"]["upload_bytes_per_param"],
        },
        "rounds_s": {"he": results["sum"]["round_s_each"], "plain": results["none"]["round_s_each"]},
        "cpu_s_per_round": {"he": results["sum"]["cpu_s_per_round"], "plain": results["none"]["cpu_s_per_round"]},
        "note": (
            "a warm-up job runs first; round 0 of each job is excluded from the means; all silos and the "
            "aggregator share this machine's cores, so every silo's crypto CPU adds up; the plaintext "
            "profile sends float64 (8 B/param)"
        ),
    }
    emit(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
