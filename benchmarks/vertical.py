"""Vertical logistic regression: PSI throughput, and an epoch with HE vs the same protocol in plaintext.

3 parties (one active with labels), 10,000 synthetic entities, 30 features each, every party holding
all entities; separate processes over mTLS through the aggregator. An epoch's time is measured between
the active party's consecutive epoch reports in the aggregator's audit log (so key generation, PSI
and start-up are excluded). PSI throughput is one blinding step (hash + X25519) on one core.

    python -m benchmarks.vertical --json OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, machine, workdir_for
from cipherfed.localconsortium import LocalConsortium
from crypto.psi import PsiParty
from protocol import cipherfed_pb2 as pb
from protocol.vocabulary import JobStatus

PARTIES = ["active", "passive-1", "passive-2"]


def psi_throughput(n: int) -> float:
    party = PsiParty([f"entity-{i}" for i in range(n)], "bench")
    t0 = time.perf_counter()
    party.blinded()
    return n / (time.perf_counter() - t0)


def _write(c: LocalConsortium, entities: int, features: int, seed: int) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(entities, features * len(PARTIES)))
    true_w = rng.normal(size=x.shape[1])
    y = (x @ true_w + rng.normal(size=entities) > 0).astype(int)
    columns = {}
    for k, party in enumerate(PARTIES):
        cols = [f"{party.replace('-', '_')}_x{i}" for i in range(features)]
        columns[party] = cols
        block = x[:, k * features : (k + 1) * features]
        with open(c.nodes[party].data, "w") as f:
            f.write(",".join(["id", *cols] + (["label"] if party == "active" else [])) + "\n")
            for i in rng.permutation(entities):
                f.write(
                    ",".join([f"e{i}", *(f"{v:.6f}" for v in block[i])] + ([str(y[i])] if party == "active" else []))
                    + "\n"
                )
    return columns


def _spec(name: str, profile: str, columns: dict[str, list[str]], epochs: int, batch: int) -> str:
    table = "\n".join(
        f"{p.replace('-', '_')} = {json.dumps(c)}".replace(p.replace("-", "_"), f'"{p}"', 1) for p, c in columns.items()
    )
    return f"""name = "{name}"
partition = "vertical"
rounds = {epochs}
batch_size = {batch}
lr = 0.3
he_profile = "{profile}"
participants = {json.dumps(PARTIES)}
seed = 3
[model]
type = "logreg"
[dataset]
label = "label"
id = "id"
[vertical]
active = "active"
passive = ["passive-1", "passive-2"]
min_entities = 10
[vertical.features]
{table}
"""


def _epoch_seconds(c: LocalConsortium, job_id: str) -> list[float]:
    import datetime as dt

    stamps = []
    for line in (c.agg_dir / "state" / "audit.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["event"] == "metrics_reported" and r["job"] == job_id:
            stamps.append(dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp())
    return [b - a for a, b in itertools.pairwise(stamps)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=30, help="per party")
    parser.add_argument("--epochs", type=int, default=2, help="epoch time = between consecutive epoch reports")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--psi-ids", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    psi_rate = psi_throughput(args.psi_ids)
    with workdir_for(args.workdir, "cipherfed-vbench-") as workdir:
        c = LocalConsortium(workdir, PARTIES)
        c.provision(he_keys=False)
        columns = _write(c, args.entities, args.features, 0)
        epochs: dict[str, list[float]] = {}
        walls: dict[str, float] = {}
        relayed: dict[str, int] = {}
        try:
            stub = c.start_all(node_keys='scope = "consortium"', plaintext_comparison=True)
            for profile in ("none", "vertical"):
                spec = _spec(f"bench-{profile}", profile, columns, args.epochs, args.batch_size)
                t0 = time.time()
                job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
                while (status := stub.GetJobStatus(pb.JobRef(job_id=job), timeout=30)).status == JobStatus.RUNNING:
                    time.sleep(0.2)
                if status.status != JobStatus.COMPLETED:
                    raise RuntimeError(f"{job} {status.status}: {status.reason} (logs: {c.logs})")
                walls[profile] = time.time() - t0
                epochs[profile] = _epoch_seconds(c, job)
                relayed[profile] = int(status.relay_bytes)
        finally:
            c.stop_all()
    he, plain = float(np.mean(epochs["vertical"])), float(np.mean(epochs["none"]))
    result = {
        "benchmark": "vertical",
        "parties": len(PARTIES),
        "entities": args.entities,
        "features_per_party": args.features,
        "batch_size": args.batch_size,
        "machine": machine(),
        "psi_ids_per_s": psi_rate,
        "epoch_s_he": he,
        "epoch_s_plain": plain,
        "ratio": he / plain,
        "job_wall_s": walls,
        "relay_bytes": relayed,
        "note": "epoch time between consecutive epoch reports of the active party; all processes share this "
        "machine's cores",
    }
    emit(result, args.json_path)
    return result


if __name__ == "__main__":
    main()
