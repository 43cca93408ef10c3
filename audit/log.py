"""The append-only audit log a party keeps: hash-chained, signed, fsynced per record.

On open, a torn last line (the process died mid-write) is not dropped: its bytes are moved to an
evidence file next to the log and a ``log_recovered`` record naming that file and its hash is
appended. A log always begins with ``log_opened``, which carries the signer's certificate so
verification can check every signature and the chain to the consortium CA.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from audit.records import GENESIS_PREV, sign_record
from audit.structlog import get_logger, log_event
from crypto.pki import certificate_fingerprint, common_name

# Bounds on what one record may hold, applied here so that no caller (and no remote party whose
# text a caller records) can grow the log by more than a few kilobytes per record.
MAX_TEXT_CHARS = 4096  # a certificate PEM (about 800) fits; a megabyte of "reason" does not
MAX_ITEMS = 256  # list items / dict keys per value
MAX_DEPTH = 4
MAX_DETAILS_BYTES = 64 << 10
TRUNCATED = "...[truncated: {n} more {unit}]"


def bounded(value: Any, depth: int = 0) -> Any:
    """A copy of a detail value within the bounds above; what is cut is replaced by a marker."""
    if isinstance(value, str):
        if len(value) <= MAX_TEXT_CHARS:
            return value
        return value[:MAX_TEXT_CHARS] + TRUNCATED.format(n=len(value) - MAX_TEXT_CHARS, unit="characters")
    if isinstance(value, bytes):
        return bounded(value.hex(), depth)
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return TRUNCATED.format(n=len(value), unit="keys")
        items = list(value.items())
        out = {str(k)[:128]: bounded(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["..."] = TRUNCATED.format(n=len(items) - MAX_ITEMS, unit="keys")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        seq = list(value)
        if depth >= MAX_DEPTH:
            return TRUNCATED.format(n=len(seq), unit="items")
        kept = [bounded(v, depth + 1) for v in seq[:MAX_ITEMS]]
        if len(seq) > MAX_ITEMS:
            kept.append(TRUNCATED.format(n=len(seq) - MAX_ITEMS, unit="items"))
        return kept
    if value is None or isinstance(value, bool | int | float):
        return value
    return bounded(str(value), depth)


def bounded_name(value: str) -> str:
    """Actor and job: names, so a few hundred characters at most."""
    return value if len(value) <= 256 else value[:256] + TRUNCATED.format(n=len(value) - 256, unit="characters")


def bounded_details(details: dict[str, Any]) -> dict[str, Any]:
    """Every field bounded; if the whole is still too large, only its small fields are kept."""
    out = bounded(details)
    size = len(json.dumps(out, ensure_ascii=False, default=str))
    if size <= MAX_DETAILS_BYTES:
        return dict(out)
    small = {k: v for k, v in out.items() if len(json.dumps(v, ensure_ascii=False, default=str)) <= 512}
    small["truncated"] = f"details of {size} bytes cut to their small fields (at most {MAX_DETAILS_BYTES} bytes)"
    return small


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(
        self,
        path: Path,
        private_key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        software_version: str = "",
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = private_key
        self._cert = certificate
        self.party = common_name(certificate)
        self._lock = threading.Lock()
        self.seq = -1
        self.head = GENESIS_PREV
        recovered = self._recover()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        fingerprint = certificate_fingerprint(certificate)
        if self.seq < 0 or self._last_signer != fingerprint:
            pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
            event = "log_opened" if self.seq < 0 else "signer_changed"
            self.append(
                event, self.party, certificate_pem=pem, certificate_fingerprint=fingerprint, version=software_version
            )
        if recovered:
            self.append("log_recovered", self.party, **recovered)

    def _recover(self) -> dict[str, Any] | None:
        """Read the existing log to find the head; set a torn tail aside as evidence."""
        self._last_signer = ""
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        good_end = 0
        for line_end in _line_ends(data):
            line = data[good_end:line_end]
            try:
                record = json.loads(line)
            except ValueError:
                break
            self.seq, self.head = int(record["seq"]), str(record["hash"])
            if record.get("event") in ("log_opened", "signer_changed"):
                self._last_signer = str(record["details"].get("certificate_fingerprint", ""))
            good_end = line_end + 1
        if good_end == len(data):
            return None
        torn = data[good_end:]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        evidence = self.path.with_name(f"{self.path.name}.torn-{stamp}")
        evidence.write_bytes(torn)
        with open(self.path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
        return {
            "torn_bytes": len(torn),
            "evidence_file": evidence.name,
            "evidence_sha256": hashlib.sha256(torn).hexdigest(),
            "after_seq": self.seq,
        }

    def append(
        self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **details: Any
    ) -> dict[str, Any]:
        with self._lock:
            record: dict[str, Any] = {
                "seq": self.seq + 1,
                "ts": utc_now(),
                "party": self.party,
                "actor": bounded_name(actor or "unknown"),
                "event": event,
                "job": None if job is None else bounded_name(job),
                "round": round,
                "details": bounded_details(details),
                "prev": self.head,
            }
            sign_record(record, self._key)
            line = (
                json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str) + "\n"
            ).encode()
            os.write(self._fd, line)
            os.fsync(self._fd)
            self.seq, self.head = record["seq"], record["hash"]
            if event in ("log_opened", "signer_changed"):
                self._last_signer = str(details.get("certificate_fingerprint", ""))
            return record

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def _line_ends(data: bytes) -> list[int]:
    ends: list[int] = []
    start = 0
    while True:
        i = data.find(b"\n", start)
        if i < 0:
            return ends
        ends.append(i)
        start = i + 1


class AuditSink:
    """The EventSink of a party with an audit log: every event is signed into the chain and also
    written as a structured log line for operators."""

    def __init__(self, log: AuditLog, logger_name: str) -> None:
        self.log = log
        self._logger = get_logger(logger_name)

    @property
    def head(self) -> str:
        return self.log.head

    def record(
        self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **details: Any
    ) -> None:
        self.log.append(event, actor, job=job, round=round, **details)
        level = logging.WARNING if event.endswith(("refused", "failed", "rejected", "declined")) else logging.INFO
        log_event(self._logger, event, level, actor=actor, job=job, round=round, **_short(details))


def _short(details: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, str) or len(v) < 200 else v[:60] + "...") for k, v in details.items()}
