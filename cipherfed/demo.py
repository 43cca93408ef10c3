"""``cipherfed demo``: an encrypted consortium of hospitals on this machine, end to end.

What it shows: the aggregator and 3 hospital nodes run as separate processes over mutual TLS;
hospital-1 generates the HE key and wraps it to the other hospitals; the aggregator holds only the
public parameters. The federated model is compared with centralized training on the pooled data
and with the same job run without encryption, all scored on one held-out test set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from audit.report import write_report
from cipherfed import demo_secagg
from cipherfed.cmd_job import watch_job
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import parse_job_spec
from silo_node.jobfiles import load_exported_model
from silo_node.models import evaluate, make_adapter


@dataclass
class DemoData:
    name: str
    columns: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    model: str
    rounds: int
    local_epochs: int
    lr: float


def load_dataset(name: str, rounds: int | None) -> DemoData:
    if name == "breast_cancer":
        bunch = load_breast_cancer()
        model, default_rounds, epochs, lr = 'type = "logreg"', 10, 2, 0.1
    elif name == "digits":
        bunch = load_digits()
        model, default_rounds, epochs, lr = 'type = "mlp"\nhidden = [64]\nnum_classes = 10', 15, 2, 0.1
    else:
        raise ValueError(f"unknown demo dataset {name!r}: use breast_cancer or digits")
    x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int64)
    columns = [
        f"f{i:02d}_" + "".join(ch if ch.isalnum() else "_" for ch in str(n)) for i, n in enumerate(bunch.feature_names)
    ]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return DemoData(
        name, columns, x_train, y_train, x_test, y_test, int(y.max()) + 1, model, rounds or default_rounds, epochs, lr
    )


def non_iid_split(y: np.ndarray, silos: int, seed: int = 0, alpha: float = 1.5) -> list[np.ndarray]:
    """Label skew: each class is spread over the silos by Dirichlet(alpha) proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(silos)]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        shares = rng.dirichlet([alpha] * silos)
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for silo, piece in enumerate(np.split(idx, cuts)):
            parts[silo].extend(piece.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def centralized(data: DemoData, spec_text: str) -> dict[str, float]:
    """The same model trained on the pooled training data for the same number of epochs."""
    spec = parse_job_spec(spec_text)
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    std[std < 1e-8] = 1.0
    adapter = make_adapter(spec, data.x_train.shape[1])
    for r in range(spec.rounds):
        adapter.train((data.x_train - mean) / std, data.y_train, seed=r)
    return evaluate(adapter, (data.x_test - mean) / std, data.y_test, data.num_classes)


def score_exported(path: Path, data: DemoData) -> dict[str, float]:
    adapter, mean, std = load_exported_model(path)
    x = data.x_test if mean is None or std is None else (data.x_test - mean) / std
    return evaluate(adapter, x, data.y_test, data.num_classes)


def run_job(consortium: LocalConsortium, stub: Any, spec_text: str, console: Console, timeout_s: float = 300) -> str:
    job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec_text), timeout=30).job_id
    console.print(f"[bold]submitted[/] {job_id}")
    code = watch_job(stub, job_id, poll_s=0.3, console=console)
    if code != 0:
        status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)
        raise RuntimeError(f"job {job_id} ended {status.status}: {status.reason}; logs in {consortium.logs}")
    return job_id


def wait_for_exports(consortium: LocalConsortium, job_id: str, timeout_s: float = 60) -> list[Path]:
    paths = [consortium.nodes[n].dir / "state" / "jobs" / job_id / "final_model.npz" for n in consortium.silos]
    deadline = time.time() + timeout_s
    while not all(p.exists() for p in paths):
        if time.time() > deadline:
            raise TimeoutError(f"silos did not export the final model of {job_id}")
        time.sleep(0.1)
    return paths


DP_DELTA = 1e-5
DP_LR = 0.5  # DP-SGD's clipped, noisy gradients want a larger step than plain SGD


def _epsilon_spent(consortium: LocalConsortium, job_id: str | None) -> dict[str, float]:
    """Epsilon each silo's accountant reports as spent for the job (from its audit log)."""
    spent: dict[str, float] = {}
    for name, node in consortium.nodes.items():
        for line in (node.dir / "state" / "audit.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["event"] == "update_sent" and record["job"] == job_id and "dp_epsilon" in record["details"]:
                spent[name] = max(spent.get(name, 0.0), float(record["details"]["dp_epsilon"]))
    return spent


def show_results(console: Console, title: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    """The comparison table every demo ends with: accuracy and AUC on the same held-out entities."""
    table = Table(title=title, title_justify="left")
    for column in ("model", "accuracy", "AUC"):
        table.add_column(column)
    for label, m in rows:
        table.add_row(label, f"{m['accuracy']:.4f}", f"{m.get('auc', float('nan')):.4f}")
    console.print(table)


def write_json(result: dict[str, Any], json_path: Path | None, console: Console) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
        console.print(f"JSON written to {json_path}")


def audit_epilogue(consortium: LocalConsortium, console: Console) -> dict[str, Any]:
    """Verify every party's audit log together, write the compliance report, and say so."""
    logs = [consortium.agg_dir / "state" / "audit.jsonl"] + [
        consortium.nodes[n].dir / "state" / "audit.jsonl" for n in consortium.silos
    ]
    report_path = consortium.workdir / "compliance-report.html"
    verification = write_report(logs, report_path, pki.load_certificate(consortium.ca_dir / "ca.crt"))
    console.print(f"audit: {verification.summary()}")
    console.print(f"compliance report: {report_path}")
    return {
        "verified": verification.ok,
        "records": verification.record_count,
        "anchors_checked": verification.anchors_checked,
        "report": str(report_path),
    }


def _secagg_options(silos: int, dropout: bool) -> dict[str, Any]:
    """Job-spec options of a secure-aggregation job in the demo.

    With a planned dropout the round it happens in waits for its deadline, so the timeouts are short,
    and the quorum is one silo less than the consortium, so that round closes with the survivors.
    """
    if not dropout:
        return {"secagg": ""}  # the [secagg] defaults: threshold and min_participants from the silo count
    return {
        "secagg": demo_secagg.DEMO_SECAGG_TABLE,
        "round_timeout_s": demo_secagg.DEMO_ROUND_TIMEOUT_S,
        "min_silos": silos - 1,
    }


def _start_with_fault(
    consortium: LocalConsortium, silo: str, drop_round: int, console: Console
) -> demo_secagg.DropoutWatcher:
    """Restart ``silo``'s node with the dropout fault armed (before any job is submitted)."""
    consortium.kill(silo, sig=15)
    consortium.start_node(silo, env=demo_secagg.fault_env(drop_round))
    console.print(f"{silo} runs with a fault: it stops after mask agreement in round {drop_round} of the HE job")
    return demo_secagg.DropoutWatcher(consortium, silo, drop_round, console)


def _secagg_result(
    consortium: LocalConsortium, he: tuple[str, str, Any], dp: tuple[str, str | None, Any]
) -> dict[str, Any]:
    """The HE job's secure-aggregation summary, with the DP job's (if it ran) under ``dp``."""
    result = demo_secagg.summary(consortium, *he)
    dp_spec, dp_job, dp_status = dp
    if dp_job is not None:
        result["dp"] = demo_secagg.summary(consortium, dp_spec, dp_job, dp_status)
    return result


def _show_secagg(console: Console, sa: dict[str, Any], drop_silo: str | None, drop_round: int | None) -> None:
    graph = "complete graph" if sa["graph"] == "complete" else f"{sa['graph']} neighbours"
    console.print(
        f"secure aggregation: threshold {sa['threshold']}, min participants {sa['min_participants']}, {graph}; "
        f"{sa['rounds_unmasked']} rounds unmasked, {sa['relay_bytes'] / 1e3:.1f} kB of keys and shares relayed"
    )
    for d in sa["dropouts"]:
        console.print(f"  dropout recovered: {d['silo']} in round {d['round']} (its pairwise masks removed)")
    if drop_silo is not None and not sa["dropouts"]:
        console.print(f"[red]  {drop_silo} was planned to drop in round {drop_round}, but no dropout was unmasked[/]")


def run_demo(
    workdir: Path,
    silos: int = 3,
    rounds: int | None = None,
    dataset: str = "breast_cancer",
    json_path: Path | None = None,
    console: Console | None = None,
    after_provision: Callable[[LocalConsortium], None] | None = None,
    dp_epsilon: float | None = None,
    metrics_listen: str | None = None,
    he_profile: str = "sum",
    secure_aggregation: bool = False,
    drop_silo: str | None = None,
    drop_round: int | None = None,
) -> dict[str, Any]:
    """``he_profile`` "compact": the HE and DP jobs quantize (crypto/compact.py) under a compact key; as a
    compact job has no statistics round, every job then standardizes locally (the plaintext one too,
    so that the comparison isolates what HE costs).

    ``secure_aggregation`` (compact only): the HE and DP jobs mask their lanes (issue 14); the plaintext
    job stays as it is. ``drop_silo``/``drop_round``: that silo's node stops after mask agreement in that
    round of the HE job and is restarted without the fault (see cipherfed/demo_secagg.py)."""
    if he_profile not in ("sum", "compact"):
        raise ValueError(f"--he-profile must be sum or compact, got {he_profile!r}")
    data = load_dataset(dataset, rounds)
    demo_secagg.check_options(silos, data.rounds, he_profile, secure_aggregation, drop_silo, drop_round)
    console = console or Console()
    started = time.time()
    names = [f"hospital-{i + 1}" for i in range(silos)]
    consortium = LocalConsortium(workdir, names)
    console.rule("[bold]cipherfed demo")
    console.print(f"workdir: {consortium.workdir}")
    consortium.provision()
    console.print(
        f"CA, certificates (node keys born in each node's directory) and HE key {consortium.fingerprint} "
        f"(generated at {names[0]}, wrapped to {', '.join(names[1:])}; the aggregator holds only parameters)"
    )
    fingerprint = consortium.fingerprint
    if he_profile == "compact":
        fingerprint = consortium.add_he_key("compact")
        console.print(f"compact-profile HE key {fingerprint} (same custody: generated at {names[0]}, wrapped)")
    parts = non_iid_split(data.y_train, silos)
    for name, rows in zip(names, parts, strict=True):
        consortium.write_data(name, data.x_train[rows], data.y_train[rows], data.columns)
        counts = np.bincount(data.y_train[rows], minlength=data.num_classes)
        console.print(f"  {name}: {len(rows)} records, class counts {counts.tolist()}")
    if after_provision:
        after_provision(consortium)
    watcher: demo_secagg.DropoutWatcher | None = None
    try:
        stub = consortium.start_all(
            aggregator_extra=f'metrics_listen = "{metrics_listen}"' if metrics_listen else "",
            plaintext_comparison=True,  # the plaintext baseline is opted in
        )
        if drop_silo is not None and drop_round is not None:
            watcher = _start_with_fault(consortium, drop_silo, drop_round, console)
        if metrics_listen:
            console.print(f"aggregator metrics: http://{metrics_listen}/metrics")
        common: dict[str, Any] = dict(
            rounds=data.rounds,
            model=data.model,
            local_epochs=data.local_epochs,
            lr=data.lr,
            min_silos=silos,
            batch_size=16,
        )
        he_options: dict[str, Any] = {}
        if he_profile == "compact":
            common["scaling"] = "local"
            # the public cap on one silo's weight: its record count (a little above its training rows)
            he_options = {"he_profile": "compact", "compact": f"weight_cap = {max(len(p) for p in parts)}"}
        if secure_aggregation:
            he_options |= _secagg_options(silos, dropout=watcher is not None)
        he_spec = job_toml(f"{dataset}-he", names, fingerprint, data.columns, **{**common, **he_options})
        plain_spec = job_toml(
            f"{dataset}-plain", names, consortium.fingerprint, data.columns, he_profile="none", **common
        )
        masked = " with secure aggregation" if secure_aggregation else ""
        console.rule(f"federated training under HE (profile {he_profile}){masked}")
        if watcher is not None:
            watcher.start()
        try:
            he_job = run_job(consortium, stub, he_spec, console)
        finally:
            if watcher is not None:
                watcher.stop()
        if watcher is not None:
            watcher.check()
        he_status = stub.GetJobStatus(pb.JobRef(job_id=he_job), timeout=30)
        console.rule("same job without encryption (he_profile = none)")
        plain_job = run_job(consortium, stub, plain_spec, console)
        dp_job, dp_spec, dp_status = None, "", None
        if dp_epsilon is not None:
            console.rule(f"same job under HE with record-level DP-SGD (epsilon {dp_epsilon}, delta {DP_DELTA:g})")
            dp_spec = job_toml(
                f"{dataset}-dp",
                names,
                fingerprint,
                data.columns,
                extra=f"[dp]\nepsilon = {dp_epsilon}\ndelta = {DP_DELTA}\nmax_grad_norm = 1.0\n",
                **{**common, "lr": DP_LR, "scaling": "local", **he_options},
            )
            dp_job = run_job(consortium, stub, dp_spec, console)
            dp_status = stub.GetJobStatus(pb.JobRef(job_id=dp_job), timeout=30)
        he_paths = wait_for_exports(consortium, he_job)
        plain_paths = wait_for_exports(consortium, plain_job)
        dp_paths = wait_for_exports(consortium, dp_job) if dp_job else []
    finally:
        consortium.stop_all()
    final = score_exported(he_paths[0], data)
    plain = score_exported(plain_paths[0], data)
    central = centralized(data, he_spec)
    weights = [k for k in np.load(he_paths[0]).files if not k.startswith("__")]  # local scaling: own mean/std
    identical = all(np.array_equal(np.load(he_paths[0])[k], np.load(p)[k]) for p in he_paths[1:] for k in weights)
    upload_total = sum(r.bytes_in for r in he_status.rounds)
    params = sum(np.load(he_paths[0])[k].size for k in np.load(he_paths[0]).files if not k.startswith("__"))
    result: dict[str, Any] = {
        "partition": "horizontal",
        "dataset": dataset,
        "silos": silos,
        "rounds": data.rounds,
        "final": {"accuracy": final["accuracy"], "auc": final.get("auc")},
        "centralized": {"accuracy": central["accuracy"], "auc": central.get("auc")},
        "plaintext_federated": {"accuracy": plain["accuracy"], "auc": plain.get("auc")},
        "upload_bytes_total": upload_total,
        "model_parameters": int(params),
        "all_silos_hold_the_same_model": bool(identical),
        "he_job": he_job,
        "plaintext_job": plain_job,
        "he_profile": he_profile,
        "key_fingerprint": fingerprint,
        "workdir": str(consortium.workdir),
        "wall_s": round(time.time() - started, 2),
    }
    dp_result = score_exported(dp_paths[0], data) if dp_paths else None
    if dp_result is not None:
        result["dp"] = {
            "epsilon": dp_epsilon,
            "delta": DP_DELTA,
            "accuracy": dp_result["accuracy"],
            "auc": dp_result.get("auc"),
            "job": dp_job,
            "epsilon_spent": _epsilon_spent(consortium, dp_job),
        }
    table_rows: list[tuple[str, dict[str, Any]]] = [
        (f"federated, encrypted (HE {he_profile})", final),
        ("federated, plaintext", plain),
        ("centralized (pooled data)", central),
    ]
    if dp_result is not None:
        table_rows.append((f"federated, encrypted + DP (epsilon {dp_epsilon})", dp_result))
    show_results(console, f"{dataset}: held-out test set ({len(data.y_test)} records)", table_rows)
    console.print(
        f"uploaded {upload_total / 1e3:.1f} kB of ciphertext in {len(he_status.rounds)} rounds; "
        f"all silos hold the same model: {identical}; wall {result['wall_s']} s"
    )
    if secure_aggregation:
        result["secure_aggregation"] = _secagg_result(
            consortium, (he_spec, he_job, he_status), (dp_spec, dp_job, dp_status)
        )
        _show_secagg(console, result["secure_aggregation"], drop_silo, drop_round)
    result["audit"] = audit_epilogue(consortium, console)
    write_json(result, json_path, console)
    return result
