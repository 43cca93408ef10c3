"""The silo's privacy ledger (SQLite): epsilon reserved per job and spent per round, per dataset.

A job's whole epsilon is reserved when the job is accepted, so that two jobs cannot together
overrun a dataset's budget; what was actually spent after each round (from the accountant) is
recorded next to it for the compliance officer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    dataset TEXT NOT NULL, job_id TEXT NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (dataset, job_id));
CREATE TABLE IF NOT EXISTS spends (
    dataset TEXT NOT NULL, job_id TEXT NOT NULL, round INTEGER NOT NULL, epsilon REAL NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (dataset, job_id, round));
"""


class PrivacyLedger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def reserved(self, dataset: str, excluding_job: str | None = None) -> float:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(epsilon), 0) FROM reservations WHERE dataset = ? AND job_id != ?",
                (dataset, excluding_job or ""),
            ).fetchone()
        return float(row[0])

    def reserve(self, dataset: str, job_id: str, epsilon: float, delta: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO reservations VALUES (?,?,?,?,?)", (dataset, job_id, epsilon, delta, time.time())
            )

    def release(self, dataset: str, job_id: str) -> bool:
        """Drop a job's reservation if nothing was ever spent on it (a job refused while being accepted).

        Spent epsilon is never given back: a reservation with recorded spending stays, whatever happens
        to the job. Returns whether a reservation was released.
        """
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM reservations WHERE dataset = ? AND job_id = ? AND NOT EXISTS "
                "(SELECT 1 FROM spends WHERE dataset = ? AND job_id = ?)",
                (dataset, job_id, dataset, job_id),
            )
        return cursor.rowcount > 0

    def reservation(self, dataset: str, job_id: str) -> float | None:
        """The epsilon reserved for one job when it was accepted, or None if it never was."""
        with self._lock:
            row = self._db.execute(
                "SELECT epsilon FROM reservations WHERE dataset = ? AND job_id = ?", (dataset, job_id)
            ).fetchone()
        return None if row is None else float(row[0])

    def record_spend(self, dataset: str, job_id: str, round_index: int, epsilon: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO spends VALUES (?,?,?,?,?)", (dataset, job_id, round_index, epsilon, time.time())
            )

    def spent(self, dataset: str, job_id: str) -> float:
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(MAX(epsilon), 0) FROM spends WHERE dataset = ? AND job_id = ?", (dataset, job_id)
            ).fetchone()
        return float(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
