"""The coordinator's and auditor's connection, and how job state is shown to a person."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from protocol import cipherfed_pb2 as pb
from protocol.channel import consortium_stub, secure_channel
from protocol.clientconfig import ClientConfig
from protocol.tomlconfig import load_toml


def connect(config_path: Path) -> Any:
    """A stub for the aggregator; the stub keeps its channel alive for the life of the command."""
    config = load_toml(ClientConfig, config_path)
    tls = config.tls.resolved(Path(config_path).resolve().parent)
    return consortium_stub(secure_channel(config.aggregator, tls.files(), config.server_name))


def mean_metric(round_status: pb.RoundStatus, name: str) -> float | None:
    values = [m.metrics[name] for m in round_status.metrics if name in m.metrics]
    return sum(values) / len(values) if values else None


def status_table(status: pb.JobStatus) -> Table:
    table = Table(
        title=f"job {status.job_id} — {status.status}" + (f" ({status.reason})" if status.reason else ""),
        title_justify="left",
    )
    expected = len(status.participants) - len(status.declined)
    for column in ("round", "status", "contributors", "kB in", "wall s", "val accuracy", "val AUC"):
        table.add_column(column, justify="left" if column == "status" else "right")
    for r in status.rounds:
        acc, auc = mean_metric(r, "accuracy"), mean_metric(r, "auc")
        table.add_row(
            str(r.round),
            r.status + (f" (attempt {r.attempt})" if r.attempt > 1 else ""),
            f"{len(r.contributors)}/{expected}",
            f"{r.bytes_in / 1e3:,.1f}",
            f"{r.wall_s:.2f}",
            "-" if acc is None else f"{acc:.3f}",
            "-" if auc is None else f"{auc:.3f}",
        )
    return table
