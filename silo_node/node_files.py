"""Small files a node keeps in its state directory across restarts (besides each job's directory)."""

from __future__ import annotations

from pathlib import Path


class FinishedJobs:
    """Ids of jobs this node has finished, one per line, kept across restarts (state_dir/finished-jobs.txt)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ids = set(path.read_text().split()) if path.exists() else set()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def add(self, job_id: str) -> None:
        if job_id not in self._ids:
            self._ids.add(job_id)
            with open(self.path, "a") as f:
                f.write(job_id + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` so that a reader sees the old or the new file, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
