"""Verifying audit logs: each one on its own, then against each other through their anchors.

Within a log: every line parses, sequence numbers run 0, 1, 2, ... (a gap means deleted records,
a step back means reordered ones), each record names the previous record's hash, each hash is
recomputed, and each signature verifies with the certificate declared in the log — which must be
issued by the consortium CA when one is given. Across logs: the silo audit heads the aggregator
recorded must exist in the silos' logs, and the aggregator heads silos recorded must exist in the
aggregator's log, so rewriting or truncating one party's log is visible from the other's.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from audit.records import GENESIS_PREV, record_hash, signature_valid
from crypto import pki
from crypto.errors import PKIError


@dataclass(frozen=True)
class Problem:
    log: str
    line: int
    seq: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.log}:{self.line}" if self.line else self.log  # line 0: the file as a whole
        where += f" (seq {self.seq})" if self.seq is not None else ""
        return f"{where}: {self.kind}: {self.message}"


# A log that is not there (or holds nothing) cannot be checked; saying FAILED would read like tampering.
NOT_CHECKED = frozenset({"missing", "empty", "unreadable"})


@dataclass
class LogResult:
    path: Path
    party: str = ""
    role: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def hashes(self) -> set[str]:
        return {r["hash"] for r in self.records if "hash" in r}


@dataclass
class Verification:
    logs: list[LogResult]
    problems: list[Problem]
    anchors_checked: int

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def record_count(self) -> int:
        return sum(len(log.records) for log in self.logs)

    def summary(self) -> str:
        if self.problems and all(p.kind in NOT_CHECKED for p in self.problems):
            return "NOT VERIFIED: " + "; ".join(str(p) for p in self.problems[:5])
        if self.ok:
            return (
                f"verified {self.record_count} records in {len(self.logs)} log(s); "
                f"{self.anchors_checked} cross-party anchors checked"
            )
        return f"FAILED: {self.problems[0]}" + (
            f" (and {len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        )


def _timestamp(record: dict[str, Any]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None


def verify_log(path: Path, ca_cert: x509.Certificate | None = None) -> LogResult:
    result = LogResult(Path(path))
    name = Path(path).name
    if not Path(path).exists():
        where = Path(path) if Path(path).is_absolute() else f"{path} (relative to {Path.cwd()})"
        message = (
            f"no such file: {where}; check the path (each party's log is state_dir/audit.jsonl on its own "
            "machine: copy it here first)"
        )
        result.problems.append(Problem(name, 0, None, "missing", message))
        return result
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as exc:
        result.problems.append(Problem(name, 0, None, "unreadable", f"{exc.strerror or exc}"))
        return result
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        message = "the file holds no records (the party has not started yet, or the file was emptied)"
        result.problems.append(Problem(name, 0, None, "empty", message))
        return result
    signer: x509.Certificate | None = None
    expected_seq, prev = 0, GENESIS_PREV

    def problem(line: int, seq: int | None, kind: str, message: str) -> None:
        result.problems.append(Problem(name, line, seq, kind, message))

    for line_no, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw)
            seq = int(record["seq"])
        except (ValueError, KeyError, TypeError):
            problem(line_no, None, "malformed record", "not a complete JSON audit record (torn or altered)")
            break
        result.records.append(record)
        if seq != expected_seq:
            kind = "gap in sequence" if seq > expected_seq else "records out of order"
            problem(
                line_no,
                seq,
                kind,
                f"expected seq {expected_seq}, found {seq}"
                + (" (records deleted)" if seq > expected_seq else " (records moved or duplicated)"),
            )
        if record.get("prev") != prev:
            problem(line_no, seq, "broken chain", "prev does not match the hash of the record before it")
        if record_hash(record) != record.get("hash"):
            problem(line_no, seq, "hash mismatch", "the record's content does not match its hash (edited)")
        if record.get("event") in ("log_opened", "signer_changed"):
            try:
                candidate = x509.load_pem_x509_certificate(str(record["details"]["certificate_pem"]).encode())
            except (KeyError, ValueError, TypeError):
                problem(line_no, seq, "unknown signer", "log does not declare a readable signer certificate")
                break
            if ca_cert is not None:
                try:
                    pki.verify_certificate(candidate, ca_cert, at=_timestamp(record))
                except PKIError as exc:
                    problem(line_no, seq, "unknown signer", f"signer certificate rejected: {exc}")
            signer = candidate
            if not result.party:
                result.party = pki.common_name(candidate)
                try:
                    result.role = pki.certificate_role(candidate)
                except PKIError:
                    result.role = ""
        elif line_no == 1:
            problem(line_no, seq, "unknown signer", "log does not begin with log_opened")
        if signer is None or not signature_valid(record, signer):
            problem(line_no, seq, "bad signature", "signature does not verify with the log's signer certificate")
        elif record.get("party") != pki.common_name(signer):
            problem(
                line_no,
                seq,
                "bad signature",
                f"record claims party {record.get('party')!r}, signed by {pki.common_name(signer)!r}",
            )
        expected_seq, prev = seq + 1, str(record.get("hash", ""))
    return result


def _check_anchors(logs: list[LogResult]) -> tuple[list[Problem], int]:
    by_party = {log.party: log for log in logs if log.party}
    aggregators = [g for g in logs if g.role == "aggregator"]
    problems: list[Problem] = []
    checked = 0
    for log in logs:
        for line_no, record in enumerate(log.records, start=1):
            details = record.get("details") or {}
            # (head recorded here, the logs that must hold it, whose head it is, where it should be)
            anchor: tuple[str, list[LogResult], str, str] | None = None
            if log.role == "aggregator" and record.get("event") in ("upload_accepted", "metrics_reported"):
                other = by_party.get(str(record.get("actor")))
                if details.get("audit_head") and other is not None:
                    anchor = (str(details["audit_head"]), [other], f"{other.party}'s", other.path.name)
            elif record.get("event") == "update_sent" and details.get("aggregator_head") and aggregators:
                anchor = (str(details["aggregator_head"]), aggregators, "the aggregator's", "the aggregator's log")
            if anchor is None:
                continue
            head, holders, whose, where = anchor
            checked += 1
            if not any(head in holder.hashes for holder in holders):
                problems.append(
                    Problem(
                        log.path.name,
                        line_no,
                        record.get("seq"),
                        "anchor mismatch",
                        f"{whose} audit head {head[:16]}... recorded here is not in "
                        f"{where} (records deleted or rewritten there)",
                    )
                )
    return problems, checked


def verify_logs(paths: list[Path], ca_cert: x509.Certificate | None = None) -> Verification:
    logs = [verify_log(Path(p), ca_cert) for p in paths]
    problems = [p for log in logs for p in log.problems]
    anchor_problems, checked = _check_anchors(logs)
    return Verification(logs, problems + anchor_problems, checked)


def load_records(paths: list[Path]) -> list[dict[str, Any]]:
    """All parseable records of the given logs, without verification (for review and reports)."""
    records: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).exists():
            continue  # reported as missing by verify_logs; a review shows what is there
        for raw in Path(path).read_bytes().split(b"\n"):
            if raw.strip():
                try:
                    records.append(json.loads(raw))
                except ValueError:
                    continue
    return records
