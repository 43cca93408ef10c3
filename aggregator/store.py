"""The aggregator's durable state: one SQLite file (jobs, rounds, contributions, metrics, keys).

Ciphertext sums live in memory while a round is open and in aggregate files once it closes; the
database records which rounds closed and where their aggregate is, so a restarted aggregator
resumes from the last completed round and reopens an interrupted one.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from aggregator.core.store_contract import JobRow, RoundRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, spec_json TEXT NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', current_round INTEGER NOT NULL, rounds_total INTEGER NOT NULL,
    submitted_by TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, relay_bytes INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, status TEXT NOT NULL, attempt INTEGER NOT NULL,
    opened_at REAL NOT NULL, deadline REAL NOT NULL, closed_at REAL, bytes_in INTEGER NOT NULL DEFAULT 0,
    contributors INTEGER NOT NULL DEFAULT 0, aggregate_path TEXT, reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, round));
CREATE TABLE IF NOT EXISTS contributions (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, silo TEXT NOT NULL, digest TEXT NOT NULL,
    bytes INTEGER NOT NULL, audit_head TEXT NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (job_id, round, silo));
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, silo TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (job_id, round, silo, name));
CREATE TABLE IF NOT EXISTS declines (
    job_id TEXT NOT NULL, silo TEXT NOT NULL, round INTEGER NOT NULL, reasons_json TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (job_id, silo, round));
CREATE TABLE IF NOT EXISTS key_material (
    scope TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, public_context BLOB NOT NULL, custodian TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS key_endorsements (
    scope TEXT PRIMARY KEY, endorsement BLOB NOT NULL, custodian_cert BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS wrapped_keys (
    scope TEXT NOT NULL, member TEXT NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (scope, member));
CREATE TABLE IF NOT EXISTS relay (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, sender TEXT NOT NULL, recipient TEXT NOT NULL,
    kind TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS relay_lookup ON relay (job_id, recipient, kind, seq, sender);
CREATE TABLE IF NOT EXISTS identity_pins (
    name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, serial TEXT NOT NULL, not_after REAL NOT NULL,
    pinned_at REAL NOT NULL);
"""


class StateStore:
    """Thread-safe access to the SQLite file; each method is one transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def transaction(self) -> _Transaction:
        return _Transaction(self)

    # --- jobs ---
    def insert_job(self, row: JobRow) -> None:
        self._exec(
            "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,0)",
            (
                row.job_id,
                row.name,
                row.spec_json,
                row.status,
                row.reason,
                row.current_round,
                row.rounds_total,
                row.submitted_by,
                row.created,
                time.time(),
            ),
        )

    def update_job(self, job_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._exec(
            f"UPDATE jobs SET {sets}, updated = ? WHERE job_id = ?",  # noqa: S608 - keys are ours
            (*fields.values(), time.time(), job_id),
        )

    def job(self, job_id: str) -> JobRow | None:
        row = self._exec(
            "SELECT job_id, name, spec_json, status, reason, current_round, rounds_total, "
            "submitted_by, created FROM jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        return JobRow(*row) if row else None

    def jobs(self, status: str | None = None) -> list[JobRow]:
        sql = (
            "SELECT job_id, name, spec_json, status, reason, current_round, rounds_total, submitted_by, created "
            "FROM jobs"
        )
        rows = self._exec(
            sql + (" WHERE status = ?" if status else "") + " ORDER BY created", (status,) if status else ()
        ).fetchall()
        return [JobRow(*r) for r in rows]

    # --- rounds ---
    def upsert_round(
        self, job_id: str, round_index: int, status: str, attempt: int, opened_at: float, deadline: float
    ) -> None:
        self._exec(
            "INSERT INTO rounds (job_id, round, status, attempt, opened_at, deadline) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(job_id, round) DO UPDATE SET status=excluded.status, attempt=excluded.attempt, "
            "opened_at=excluded.opened_at, deadline=excluded.deadline, closed_at=NULL, bytes_in=0, "
            "contributors=0, reason=''",
            (job_id, round_index, status, attempt, opened_at, deadline),
        )

    def update_round(self, job_id: str, round_index: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._exec(
            f"UPDATE rounds SET {sets} WHERE job_id = ? AND round = ?",  # noqa: S608 - keys are ours
            (*fields.values(), job_id, round_index),
        )

    def round(self, job_id: str, round_index: int) -> RoundRow | None:
        row = self._exec(
            "SELECT job_id, round, status, attempt, opened_at, deadline, closed_at, bytes_in, "
            "contributors, aggregate_path, reason FROM rounds WHERE job_id = ? AND round = ?",
            (job_id, round_index),
        ).fetchone()
        return RoundRow(*row) if row else None

    def rounds(self, job_id: str) -> list[RoundRow]:
        rows = self._exec(
            "SELECT job_id, round, status, attempt, opened_at, deadline, closed_at, bytes_in, "
            "contributors, aggregate_path, reason FROM rounds WHERE job_id = ? ORDER BY round",
            (job_id,),
        ).fetchall()
        return [RoundRow(*r) for r in rows]

    # --- contributions ---
    def add_contribution(
        self, job_id: str, round_index: int, silo: str, digest: str, nbytes: int, audit_head: str
    ) -> None:
        self._exec(
            "INSERT INTO contributions VALUES (?,?,?,?,?,?,?)",
            (job_id, round_index, silo, digest, nbytes, audit_head, time.time()),
        )

    def contributions(self, job_id: str, round_index: int) -> dict[str, tuple[str, int, str]]:
        rows = self._exec(
            "SELECT silo, digest, bytes, audit_head FROM contributions WHERE job_id = ? AND round = ?",
            (job_id, round_index),
        ).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def clear_contributions(self, job_id: str, round_index: int) -> None:
        self._exec("DELETE FROM contributions WHERE job_id = ? AND round = ?", (job_id, round_index))

    # --- metrics and declines ---
    def put_metrics(self, job_id: str, round_index: int, silo: str, metrics: dict[str, float]) -> None:
        with self.transaction():
            for name, value in metrics.items():
                self._exec(
                    "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?)", (job_id, round_index, silo, name, value)
                )

    def metrics(self, job_id: str) -> dict[int, dict[str, dict[str, float]]]:
        out: dict[int, dict[str, dict[str, float]]] = {}
        for r, silo, name, value in self._exec(
            "SELECT round, silo, name, value FROM metrics WHERE job_id = ? ORDER BY round, silo, name", (job_id,)
        ):
            out.setdefault(r, {}).setdefault(silo, {})[name] = value
        return out

    def add_decline(self, job_id: str, silo: str, round_index: int, reasons: list[str]) -> None:
        self._exec(
            "INSERT OR REPLACE INTO declines VALUES (?,?,?,?,?)",
            (job_id, silo, round_index, json.dumps(reasons), time.time()),
        )

    def declines(self, job_id: str, round_index: int = -1) -> dict[str, list[str]]:
        """Silos that declined the whole job (round -1) or one round, with their reasons."""
        rows = self._exec(
            "SELECT silo, reasons_json FROM declines WHERE job_id = ? AND round = ?", (job_id, round_index)
        )
        return {silo: json.loads(reasons) for silo, reasons in rows}

    def all_declines(self, job_id: str) -> list[tuple[str, int, list[str]]]:
        """Every decline of a job as (silo, round, reasons), in round order (round -1: the whole job)."""
        rows = self._exec(
            "SELECT silo, round, reasons_json FROM declines WHERE job_id = ? ORDER BY round, silo", (job_id,)
        )
        return [(silo, int(round_index), json.loads(reasons)) for silo, round_index, reasons in rows]

    # --- key material (opaque) ---
    def put_key_material(
        self,
        scope: str,
        fingerprint: str,
        public_context: bytes,
        custodian: str,
        wrapped: dict[str, bytes],
        endorsement: bytes = b"",
        custodian_cert: bytes = b"",
    ) -> None:
        with self.transaction():
            self._exec(
                "INSERT OR REPLACE INTO key_material VALUES (?,?,?,?,?)",
                (scope, fingerprint, public_context, custodian, time.time()),
            )
            self._exec("INSERT OR REPLACE INTO key_endorsements VALUES (?,?,?)", (scope, endorsement, custodian_cert))
            self._exec("DELETE FROM wrapped_keys WHERE scope = ?", (scope,))
            for member, blob in wrapped.items():
                self._exec("INSERT INTO wrapped_keys VALUES (?,?,?)", (scope, member, blob))

    def key_material(self, scope: str) -> tuple[str, bytes, str] | None:
        row = self._exec(
            "SELECT fingerprint, public_context, custodian FROM key_material WHERE scope = ?", (scope,)
        ).fetchone()
        return (row[0], bytes(row[1]), row[2]) if row else None

    def key_endorsement(self, scope: str) -> tuple[bytes, bytes]:
        """The custodian's endorsement and certificate as stored (empty if none): relayed, never trusted here."""
        row = self._exec(
            "SELECT endorsement, custodian_cert FROM key_endorsements WHERE scope = ?", (scope,)
        ).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else (b"", b"")

    def scope_of_fingerprint(self, fingerprint: str) -> str | None:
        row = self._exec("SELECT scope FROM key_material WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return str(row[0]) if row else None

    def all_public_contexts(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._exec("SELECT public_context FROM key_material")]

    def wrapped_key(self, scope: str, member: str) -> bytes | None:
        row = self._exec("SELECT blob FROM wrapped_keys WHERE scope = ? AND member = ?", (scope, member)).fetchone()
        return bytes(row[0]) if row else None

    # --- relay mailbox ---
    def relay_put(self, job_id: str, sender: str, recipient: str, kind: str, seq: int, payload: bytes) -> None:
        self._exec(
            "INSERT INTO relay (job_id, sender, recipient, kind, seq, payload, created) VALUES (?,?,?,?,?,?,?)",
            (job_id, sender, recipient, kind, seq, payload, time.time()),
        )

    def add_relay_bytes(self, job_id: str, nbytes: int) -> None:
        self._exec("UPDATE jobs SET relay_bytes = relay_bytes + ? WHERE job_id = ?", (nbytes, job_id))

    def relay_bytes(self, job_id: str) -> int:
        row = self._exec("SELECT relay_bytes FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else 0

    def relay_peek(self, job_id: str, recipient: str, kind: str, seq: int, sender: str) -> list[bytes]:
        rows = self._exec(
            "SELECT payload FROM relay WHERE job_id = ? AND recipient = ? AND kind = ? AND seq = ? AND sender = ? "
            "ORDER BY id",
            (job_id, recipient, kind, seq, sender),
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def relay_take(self, job_id: str, recipient: str, kind: str, seq: int, sender: str) -> tuple[int, list[bytes]]:
        """Deliver and delete: the messages of one (kind, seq, sender); seq -1 takes the oldest seq waiting."""
        with self._lock:
            if seq < 0:
                row = self._db.execute(
                    "SELECT seq FROM relay WHERE job_id = ? AND recipient = ? AND kind = ? AND sender = ? "
                    "ORDER BY id LIMIT 1",
                    (job_id, recipient, kind, sender),
                ).fetchone()
                if row is None:
                    return seq, []
                seq = int(row[0])
            payloads = self.relay_peek(job_id, recipient, kind, seq, sender)
            if payloads:
                self._db.execute(
                    "DELETE FROM relay WHERE job_id = ? AND recipient = ? AND kind = ? AND seq = ? AND sender = ?",
                    (job_id, recipient, kind, seq, sender),
                )
            return seq, payloads

    # --- identity pins (name -> the certificate that speaks for it; see aggregator/pinning.py) ---
    def identity_pins(self) -> dict[str, tuple[str, int, float]]:
        rows = self._exec("SELECT name, fingerprint, serial, not_after FROM identity_pins").fetchall()
        return {name: (fp, int(serial, 16), until) for name, fp, serial, until in rows}

    def pin_identity(self, name: str, fingerprint: str, serial: int, not_after: float) -> None:
        self._exec(
            "INSERT OR REPLACE INTO identity_pins VALUES (?,?,?,?,?)",
            (name, fingerprint, f"{serial:x}", not_after, time.time()),
        )

    def metrics_of(self, job_id: str, round_index: int, silo: str) -> dict[str, float]:
        rows = self._exec(
            "SELECT name, value FROM metrics WHERE job_id = ? AND round = ? AND silo = ?", (job_id, round_index, silo)
        ).fetchall()
        return {name: value for name, value in rows}


class _Transaction:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._lock.acquire()
        self._store._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        try:
            self._store._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._store._lock.release()
