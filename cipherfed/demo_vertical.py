"""``cipherfed demo --partition vertical``: three parties hold different columns of the same patients.

The hospital holds the diagnosis (label) and 10 features, the lab 10 others, the imaging centre the
last 10, each for a different 85-95% subset of patients, and each writes patient ids its own way
(case, padding, full-width digits). The parties align their patients with ECDH-PSI through the
aggregator and train logistic regression under HE; the result is compared with centralized logistic
regression on the same intersection and split, and with the same protocol without encryption.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score

from cipherfed.cmd_job import watch_job
from cipherfed.demo import audit_epilogue, show_results, write_json
from cipherfed.localconsortium import LocalConsortium
from crypto.psi import normalize_id
from protocol import cipherfed_pb2 as pb
from silo_node.vertical import train_positions

PARTIES = {"hospital": range(0, 10), "lab": range(10, 20), "imaging": range(20, 30)}
STYLE = {
    "hospital": "P-{i:05d}",
    "lab": "  p-{i:05d} ",
    "imaging": "\uff30-{i:05d}",
}  # fullwidth P; all normalise to p-00042
SEED = 11


def _columns(names: Any, idx: range) -> list[str]:
    return [f"f{i:02d}_" + "".join(ch if ch.isalnum() else "_" for ch in str(names[i])) for i in idx]


def write_party_data(consortium: LocalConsortium, seed: int = SEED) -> dict[str, Any]:
    bunch = load_breast_cancer()
    x, y = bunch.data, bunch.target
    rng = np.random.default_rng(seed)
    held: dict[str, np.ndarray] = {}
    for party, idx in PARTIES.items():
        share = rng.uniform(0.85, 0.95)
        rows = np.sort(rng.choice(len(y), size=int(share * len(y)), replace=False))
        held[party] = rows
        cols = _columns(bunch.feature_names, idx)
        header = ["patient_id", *cols] + (["diagnosis"] if party == "hospital" else [])
        order = rng.permutation(rows)  # each party stores its rows in its own order
        with open(consortium.nodes[party].data, "w") as f:
            f.write(",".join(header) + "\n")
            for r in order:
                values = [repr(float(v)) for v in x[r, list(idx)]]
                label = [str(int(y[r]))] if party == "hospital" else []
                f.write(",".join([STYLE[party].format(i=int(r)), *values, *label]) + "\n")
    common = set(held["hospital"]) & set(held["lab"]) & set(held["imaging"])
    return {
        "x": x,
        "y": y,
        "held": held,
        "common": common,
        "columns": {p: _columns(bunch.feature_names, idx) for p, idx in PARTIES.items()},
    }


def vertical_job_toml(name: str, he_profile: str, columns: dict[str, list[str]], epochs: int) -> str:
    table = "\n".join(
        f"{p} = [{', '.join(repr(c).replace(chr(39), chr(34)) for c in cols)}]" for p, cols in columns.items()
    )
    return f"""name = "{name}"
partition = "vertical"
rounds = {epochs}
batch_size = 32
lr = 0.5
he_profile = "{he_profile}"
participants = ["hospital", "lab", "imaging"]
seed = {SEED}

[model]
type = "logreg"

[dataset]
label = "diagnosis"
id = "patient_id"

[vertical]
active = "hospital"
passive = ["lab", "imaging"]
min_entities = 50

[vertical.features]
{table}
"""


def centralized(data: dict[str, Any]) -> dict[str, float]:
    """Logistic regression on the pooled columns of the same aligned entities and the same split."""
    aligned = np.asarray(data["aligned_rows"])
    x = data["x"][aligned]
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) < 1e-8, 1.0, x.std(axis=0))
    y = data["y"][aligned]
    train, test = train_positions(len(aligned), SEED)
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    p = model.predict_proba(x[test])[:, 1]
    return {"accuracy": float(accuracy_score(y[test], p > 0.5)), "auc": float(roc_auc_score(y[test], p))}


def _hospital_aligned_rows(consortium: LocalConsortium, common: set[int]) -> list[int]:
    """The hospital's file order restricted to the common entities (the protocol's alignment order)."""
    rows = []
    for line in consortium.nodes["hospital"].data.read_text().splitlines()[1:]:
        original = int(normalize_id(line.split(",")[0]).split("-")[1])
        if original in common:
            rows.append(original)
    return rows


def run_vertical_demo(
    workdir: Path, epochs: int | None = None, json_path: Path | None = None, console: Console | None = None
) -> dict[str, Any]:
    console = console or Console()
    started = time.time()
    epochs = epochs or 10
    consortium = LocalConsortium(workdir, list(PARTIES))
    console.rule("[bold]cipherfed demo — vertical partitioning")
    consortium.provision(he_keys=False)  # the hospital (active party) generates each job's key itself
    data = write_party_data(consortium)
    for party, rows in data["held"].items():
        console.print(
            f"  {party}: {len(rows)} patients, {len(data['columns'][party])} columns"
            + (" + diagnosis" if party == "hospital" else "")
            + f", ids like {STYLE[party].format(i=42)!r}"
        )
    try:
        stub = consortium.start_all(node_keys='scope = "consortium"', plaintext_comparison=True)
        results = {}
        for profile in ("vertical", "none"):
            label = "under HE (CKKS, public-key)" if profile == "vertical" else "without encryption (comparison)"
            console.rule(f"vertical logistic regression {label}")
            spec = vertical_job_toml(f"vertical-{profile}", profile, data["columns"], epochs)
            job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
            if watch_job(stub, job_id, poll_s=0.3, console=console) != 0:
                status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)
                raise RuntimeError(f"job {job_id} ended {status.status}: {status.reason} (logs: {consortium.logs})")
            results[profile] = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)
    finally:
        consortium.stop_all()
    data["aligned_rows"] = _hospital_aligned_rows(consortium, data["common"])
    central = centralized(data)

    def final(status: Any) -> dict[str, float]:
        metrics = _finish_metrics(consortium, status.job_id)  # the joint test on held-out aligned entities
        return {
            "accuracy": float(metrics.get("test_accuracy", float("nan"))),
            "auc": float(metrics.get("test_auc", float("nan"))),
        }

    he, plain = final(results["vertical"]), final(results["none"])
    result: dict[str, Any] = {
        "partition": "vertical",
        "dataset": "breast_cancer",
        "silos": 3,
        "rounds": epochs,
        "intersection_size": len(data["common"]),
        "final": he,
        "centralized": central,
        "plaintext_federated": plain,
        "upload_bytes_total": int(results["vertical"].relay_bytes),
        "plaintext_bytes_total": int(results["none"].relay_bytes),
        "he_job": results["vertical"].job_id,
        "plaintext_job": results["none"].job_id,
        "workdir": str(consortium.workdir),
        "wall_s": round(time.time() - started, 2),
    }
    title = (
        f"held-out aligned patients ({round(len(data['common']) * 0.2)} of {len(data['common'])} in the intersection)"
    )
    show_results(
        console,
        title,
        [
            ("vertical, encrypted (HE)", he),
            ("vertical, plaintext protocol", plain),
            ("centralized logistic regression", central),
        ],
    )
    console.print(
        f"relayed {result['upload_bytes_total'] / 1e6:.1f} MB under HE "
        f"({result['plaintext_bytes_total'] / 1e6:.1f} MB in plaintext); wall {result['wall_s']} s"
    )
    result["audit"] = audit_epilogue(consortium, console)
    write_json(result, json_path, console)
    return result


def _finish_metrics(consortium: LocalConsortium, job_id: str) -> dict[str, float]:
    for line in (consortium.agg_dir / "state" / "audit.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["event"] == "job_completed" and record["job"] == job_id:
            return dict(record["details"].get("metrics", {}))
    return {}
