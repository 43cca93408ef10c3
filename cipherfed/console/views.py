"""What each console page shows, as plain values for the templates (no HTML here except the
inline SVG charts, which ``audit.svg`` escapes). Everything is read through the same read-only
admin/auditor RPCs the CLI uses; the console holds no state of its own."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from markupsafe import Markup

from audit.report import display_name
from audit.svg import line_chart
from audit.verify import Verification, load_records, verify_logs
from cipherfed.admin import mean_metric
from protocol import cipherfed_pb2 as pb
from protocol.vocabulary import RoundStatus

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_AUDIT_LOGS = 200  # an audit folder is the parties' collected logs, not a whole disk
RPC_TIMEOUT_S = 10.0


def ago(unix_ms: int, now: float | None = None) -> str:
    """'12 s ago' style; 'never' for 0."""
    if not unix_ms:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - unix_ms / 1000)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def utc(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix_s)) if unix_s else ""


@dataclass
class MemberRow:
    name: str
    role: str
    fingerprint: str
    serial: str
    expires: str
    expires_in_days: float | None
    revoked: bool
    last_seen: str
    last_method: str
    in_policy: bool
    pin_mismatch: bool

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        if self.expires_in_days is not None and self.expires_in_days < 0:
            return "expired"
        if self.pin_mismatch:
            return "fingerprint differs from policy"
        if not self.fingerprint:
            return "never connected"
        return "ok"


def members(reply: pb.MemberList, now: float | None = None) -> list[MemberRow]:
    now = time.time() if now is None else now
    rows = []
    for m in reply.members:
        days = (m.not_after_unix - now) / 86400 if m.not_after_unix else None
        rows.append(
            MemberRow(
                name=m.name,
                role=m.role or m.policy_role,
                fingerprint=m.fingerprint,
                serial=m.serial,
                expires=utc(m.not_after_unix),
                expires_in_days=days,
                revoked=m.revoked,
                last_seen=ago(m.last_seen_unix_ms, now),
                last_method=m.last_method,
                in_policy=m.in_policy,
                pin_mismatch=bool(m.fingerprint and m.policy_fingerprint and m.fingerprint != m.policy_fingerprint),
            )
        )
    return rows


@dataclass
class RoundRow:
    round: int
    status: str
    attempt: int
    contributors: list[str]
    expected: int
    declines: list[tuple[str, str]]
    kbytes: float
    wall_s: float
    accuracy: float | None
    auc: float | None
    reason: str


@dataclass
class JobView:
    job_id: str
    name: str
    status: str
    reason: str
    submitted_by: str
    participants: list[str]
    partition: str
    he_profile: str
    rounds_total: int
    rounds_done: int
    rounds: list[RoundRow]
    job_declines: list[tuple[str, str]]
    total_kbytes: float
    total_wall_s: float
    dp_target: str
    charts: list[Markup] = field(default_factory=list)


def job_view(status: pb.JobStatus) -> JobView:
    spec: dict[str, Any] = json.loads(status.spec_json or "{}")
    by_round: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for d in status.declines:
        by_round[int(d.round)].append((d.silo, "; ".join(d.reasons)))
    expected = len(status.participants) - len(status.declined)
    rounds = [
        RoundRow(
            round=int(r.round),
            status=r.status,
            attempt=int(r.attempt),
            contributors=list(r.contributors),
            expected=expected - len({silo for silo, _ in by_round.get(int(r.round), [])} - set(status.declined)),
            declines=by_round.get(int(r.round), []),
            kbytes=r.bytes_in / 1e3,
            wall_s=r.wall_s,
            accuracy=mean_metric(r, "accuracy"),
            auc=mean_metric(r, "auc"),
            reason=r.reason,
        )
        for r in status.rounds
    ]
    dp = spec.get("dp")
    return JobView(
        job_id=status.job_id,
        name=status.name,
        status=status.status,
        reason=status.reason,
        submitted_by=status.submitted_by,
        participants=list(status.participants),
        partition=str(spec.get("partition", "")),
        he_profile=str(spec.get("he_profile", "")),
        rounds_total=int(status.rounds_total),
        rounds_done=sum(1 for r in status.rounds if r.status in (RoundStatus.CLOSED, RoundStatus.TRAINED)),
        rounds=rounds,
        job_declines=by_round.get(-1, []),
        total_kbytes=sum(r.bytes_in for r in status.rounds) / 1e3 + status.relay_bytes / 1e3,
        total_wall_s=sum(r.wall_s for r in status.rounds),
        dp_target=f"epsilon {dp['epsilon']:g}, delta {dp['delta']:g}" if isinstance(dp, dict) else "",
        charts=curves(status),
    )


def curves(status: pb.JobStatus) -> list[Markup]:
    """Inline SVG: each silo's validation metric per round (no chart library, no script)."""
    charts = []
    for metric, label in (("accuracy", "accuracy"), ("auc", "AUC"), ("loss", "loss")):
        series: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in status.rounds:
            for m in r.metrics:
                value = m.metrics.get(metric)
                if value is not None and value == value and abs(value) < 1e12:  # finite only
                    series[m.silo].append((float(r.round), float(value)))
        if series:
            chart = line_chart(dict(series), f"validation {label} at each silo", "round", label)
            charts.append(Markup(chart))  # noqa: S704 - line_chart escapes every text it draws
    return charts


@dataclass
class AuditView:
    root: Path
    logs: list[dict[str, Any]]
    verification: Verification | None
    dp_spent: dict[str, list[tuple[str, float, float | None]]]  # job -> (silo, epsilon spent, target)
    truncated: bool = False


def audit_paths(root: Path) -> tuple[list[Path], bool]:
    """The audit logs under the folder (``*.jsonl``, at most MAX_AUDIT_LOGS), sorted."""
    paths = sorted(p for p in root.rglob("*.jsonl") if p.is_file())
    return paths[:MAX_AUDIT_LOGS], len(paths) > MAX_AUDIT_LOGS


def audit_view(root: Path, ca_cert: x509.Certificate | None) -> AuditView:
    paths, truncated = audit_paths(root)
    if not paths:
        return AuditView(root, [], None, {}, truncated)
    verification = verify_logs(paths, ca_cert)
    logs = [
        {
            "path": display_name(log.path),
            "party": log.party,
            "role": log.role,
            "records": len(log.records),
            "problems": len(log.problems),
        }
        for log in verification.logs
    ]
    return AuditView(root, logs, verification, privacy_spent(paths), truncated)


def privacy_spent(paths: list[Path]) -> dict[str, list[tuple[str, float, float | None]]]:
    """Epsilon each silo recorded as spent per job (its update_sent records); the aggregator is
    never told this, because the spend depends on the silo's record count."""
    spent: dict[tuple[str, str], tuple[float, float | None]] = {}
    for r in load_records(paths):
        details = r.get("details") or {}
        if r.get("event") != "update_sent" or details.get("dp_epsilon") is None or not r.get("job"):
            continue
        key = (str(r["job"]), str(r.get("party", "")))
        eps = float(details["dp_epsilon"])
        target = details.get("dp_target_epsilon")
        if key not in spent or eps > spent[key][0]:
            spent[key] = (eps, None if target is None else float(target))
    out: dict[str, list[tuple[str, float, float | None]]] = defaultdict(list)
    for (job, silo), (eps, target) in sorted(spent.items()):
        out[job].append((silo, eps, target))
    return dict(out)
