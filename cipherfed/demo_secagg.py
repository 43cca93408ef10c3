"""Secure aggregation in ``cipherfed demo``: option checks, the dropout fault, and the summary read from the audit log.

``--secure-aggregation`` masks the compact profile's lanes (issue 14). ``--drop-silo NAME --drop-round R``
starts that silo's node with the fault ``CIPHERFED_FAULT_STOP_AFTER_AGREEMENT=R``: its process exits
(code 75) after mask agreement and before its upload in round R, as a crashed site would. The demo
notices, says so, and restarts the node without the fault, so it sits out round R and rejoins later
rounds; the survivors' answers reveal the dropped silo's mask key, and every silo removes its pairwise
masks (with the self masks) from the released sum. What the
demo reports about it comes from the aggregator's signed audit log, not from the demo's own bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from cipherfed.localconsortium import LocalConsortium
from protocol.jobspec import parse_job_spec, secagg_policy
from protocol.vocabulary import RoundStatus
from silo_node.faults import FAULT_EXIT_CODE, FAULT_STOP_AFTER_AGREEMENT

MIN_SECAGG_SILOS = 3  # with 2, each silo learns the other's update from the sum
MIN_DROP_SILOS = 4  # default threshold t = holders // 2 + 1: a round needs t + 1 survivors, so 3 silos lose none
SESSIONS_PER_ROUND = 1024  # protocol.secagg: session number = round * 1024 + attempt

# Timeouts of the demo's secure-aggregation jobs: short, because the round a silo drops out of waits
# for its deadline (the aggregator cannot tell a crashed silo from a slow one), but long enough for a
# loaded 2-core machine to train, agree on masks and upload in every other round.
DEMO_ROUND_TIMEOUT_S = 25.0
DEMO_SECAGG_TABLE = "setup_timeout_s = 30\nunmask_timeout_s = 15"  # nodes on a loaded machine are slow to start


def check_options(
    silos: int, rounds: int, he_profile: str, secure: bool, drop_silo: str | None, drop_round: int | None
) -> None:
    """ValueError naming the option and what to change, before anything is provisioned."""
    if not secure:
        if drop_silo is not None or drop_round is not None:
            raise ValueError(
                "--drop-silo/--drop-round: need --secure-aggregation (the fault is a secure-aggregation dropout)"
            )
        return
    if he_profile != "compact":
        raise ValueError(
            f"--secure-aggregation masks the compact profile's lanes: use --he-profile compact, not {he_profile}"
        )
    if silos < MIN_SECAGG_SILOS:
        raise ValueError(
            f"--silos: secure aggregation needs at least {MIN_SECAGG_SILOS} silos (with 2, each learns the other's "
            f"update from the sum), got {silos}"
        )
    if (drop_silo is None) != (drop_round is None):
        raise ValueError("--drop-silo and --drop-round go together: name the silo and the round it drops out of")
    if drop_silo is None or drop_round is None:
        return
    if silos < MIN_DROP_SILOS:
        raise ValueError(
            f"--silos: a dropout needs at least {MIN_DROP_SILOS} silos with the default threshold (a round needs "
            f"threshold + 1 survivors; with 3 silos the threshold is 2, so all 3 must upload), got {silos}"
        )
    names = [f"hospital-{i + 1}" for i in range(silos)]
    if drop_silo not in names:
        raise ValueError(f"--drop-silo: {drop_silo!r} is not a silo of this demo; use one of {', '.join(names)}")
    if not 0 <= drop_round <= rounds - 2:
        raise ValueError(
            f"--drop-round: must be between 0 and {rounds - 2} (the job has {rounds} rounds, numbered from 0, and the "
            f"dropped silo must have a later round to rejoin), got {drop_round}"
        )


def fault_env(drop_round: int) -> dict[str, str]:
    """The environment that makes a node stop after mask agreement in ``drop_round``."""
    return {FAULT_STOP_AFTER_AGREEMENT: str(drop_round)}


@dataclass
class DropoutWatcher:
    """Restarts the faulted silo's node (without the fault) as soon as its process exits, and says so.

    Runs in a thread beside the job's live progress table; ``console.print`` goes above the table.
    """

    consortium: LocalConsortium
    silo: str
    drop_round: int
    console: Console
    poll_s: float = 0.2
    exit_code: int | None = None
    restarted: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name=f"dropout-{self.silo}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        proc = self.consortium.processes[self.silo]
        while not self._stop.is_set():
            code = proc.poll()
            if code is not None:
                self._on_exit(code)
                return
            self._stop.wait(self.poll_s)

    def _on_exit(self, code: int) -> None:
        self.exit_code = code
        if code != FAULT_EXIT_CODE:
            self.console.print(f"[red]{self.silo} exited with code {code}, not the fault's {FAULT_EXIT_CODE}[/]")
            return
        self.console.print(
            f"[yellow]{self.silo} stopped after mask agreement in round {self.drop_round} (exit code {code}): "
            f"the round goes on without it[/]"
        )
        self.consortium.start_node(self.silo)  # no fault this time: it sits out the round and rejoins
        self.restarted = True
        self.console.print(f"[yellow]{self.silo} restarted without the fault; it rejoins the next round[/]")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> None:
        """RuntimeError unless the fault fired as planned (the demo would not show a dropout otherwise)."""
        if self.exit_code is None:
            raise RuntimeError(f"{self.silo} never stopped: the fault for round {self.drop_round} did not fire")
        if not self.restarted:
            raise RuntimeError(f"{self.silo} exited with code {self.exit_code}; see its log in the demo's logs/")


def aggregator_records(consortium: LocalConsortium, job_id: str) -> list[dict[str, Any]]:
    """The aggregator's ``secagg_*`` audit records of one job, in log order."""
    path = consortium.agg_dir / "state" / "audit.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("job") == job_id and str(r.get("event", "")).startswith("secagg_")]


def _ts(record: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00")).timestamp()


def session_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per session (round attempt): setup = session opened -> roster sent; unmask = statement sent -> secrets
    revealed and the masked sum released (the aggregator's part; each silo then removes the masks)."""
    by_session: dict[int, dict[str, dict[str, Any]]] = {}
    for r in records:
        session = r["details"].get("session")
        if isinstance(session, int):
            by_session.setdefault(session, {}).setdefault(r["event"], r)
    out = []
    for session, events in sorted(by_session.items()):
        row: dict[str, Any] = {"round": session // SESSIONS_PER_ROUND, "attempt": session % SESSIONS_PER_ROUND}
        for label, start, end in (
            ("setup_s", "secagg_session_opened", "secagg_roster_sent"),
            ("unmask_s", "secagg_statement_sent", "secagg_unmasked"),
        ):
            if start in events and end in events:
                row[label] = round(_ts(events[end]) - _ts(events[start]), 3)
        row["outcome"] = (
            "unmasked"
            if "secagg_unmasked" in events
            else "not_unmasked"
            if "secagg_failed" in events
            else "in_progress"
        )
        out.append(row)
    return out


def summary(consortium: LocalConsortium, spec_text: str, job_id: str, status: Any) -> dict[str, Any]:
    """The demo JSON's ``secure_aggregation`` object for one job: from its spec, its status and the aggregator's
    audit log (the dropouts are the ``dropped`` lists of its ``secagg_unmasked`` records)."""
    policy = secagg_policy(parse_job_spec(spec_text))
    records = aggregator_records(consortium, job_id)
    unmasked = [r for r in records if r["event"] == "secagg_unmasked"]
    dropouts = [{"round": r["round"], "silo": s} for r in unmasked for s in r["details"].get("dropped", [])]
    return {
        "job": job_id,
        "threshold": policy.threshold,
        "min_participants": policy.min_participants,
        "graph": "complete" if policy.neighbours is None else policy.neighbours,
        "rounds_completed": sum(1 for r in status.rounds if r.status == RoundStatus.CLOSED),
        "rounds_unmasked": len(unmasked),
        "dropouts_recovered": len(dropouts),
        "dropouts": dropouts,
        "failed_sessions": sum(1 for r in records if r["event"] == "secagg_failed"),
        "relay_bytes": int(status.relay_bytes),
        "timing": session_timings(records),
    }
