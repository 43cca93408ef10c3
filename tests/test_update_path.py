"""benchmarks/update_path.py counts what a run calls: checked on a small stand-in repository.

The stand-in has the four window functions the script looks for and a ``cipherfed`` whose ``demo``
calls them, one thread per side as the real processes do. The real demo takes about 25 s, too long for
every ``make test``; the count itself is the same code either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FILES = {
    "crypto/__init__.py": "",
    "crypto/engine.py": """
def encrypt(values):
    return [_checked(v) for v in values]

def _checked(value):
    return value

def statistics(values):
    return sum(values)

def decrypt(values):
    return list(values)

def stream(values):
    yield from values
""",
    "crypto/lazy.py": """
class Loaded:
    pass
""",
    "silo_node/__init__.py": "",
    "silo_node/horizontal.py": """
import threading
from types import SimpleNamespace
from crypto import engine

class HorizontalJob:
    def __init__(self):
        self.job_id = "job-1"
        self.spec = SimpleNamespace(stats_round=True, he_profile="sum")

    def _upload(self, round_index):
        if round_index == 0:
            return engine.statistics([1, 2])
        double = lambda v: 2 * v
        sent = threading.Thread(target=lambda: list(engine.stream([1])))  # as grpc consumes a request stream
        sent.start()
        sent.join()
        return engine.encrypt([double(v) for v in (1, 2)])

    def _apply_aggregate(self, round_index):
        from crypto import lazy  # a module body run inside the window is not a function

        return engine.decrypt([3])

    def outside_any_window(self):
        return engine.decrypt([4])
""",
    "aggregator/__init__.py": "",
    "aggregator/service.py": """
from crypto import engine

class UploadHeader:
    def __init__(self, job_id, round):
        self.job_id, self.round = job_id, round
        self.manifest = type("Manifest", (), {"profile": "sum"})()

def open_header(header):
    return header

class ConsortiumService:
    def Upload(self, request_iterator, context):
        open_header(next(request_iterator))
        return engine.encrypt([0])

    def DownloadAggregate(self, request, context):
        for chunk in engine.decrypt([1, 2]):
            yield chunk
""",
    "cipherfed/__init__.py": "",
    "cipherfed/__main__.py": """
import threading
from types import SimpleNamespace
from aggregator.service import ConsortiumService, UploadHeader
from silo_node.horizontal import HorizontalJob

silos, service = [HorizontalJob(), HorizontalJob()], ConsortiumService()
silos[0].outside_any_window()
for round_index in (0, 1):
    for job in silos:
        job._upload(round_index)
        t = threading.Thread(target=service.Upload, args=(iter([UploadHeader("job-1", round_index)]), None))
        t.start(); t.join()
    for job in silos:
        request = SimpleNamespace(job_id="job-1", round=round_index)
        t = threading.Thread(target=lambda: list(service.DownloadAggregate(request, None)))
        t.start(); t.join()
        job._apply_aggregate(round_index)
""",
}


def measure(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    repo = tmp_path / "repo"
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.update_path",
            "--repo",
            str(repo),
            "--names",
            "--json",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_path_counts_every_call_of_the_first_training_round_and_nothing_else(tmp_path: Path) -> None:
    done = measure(tmp_path, FILES)
    out = tmp_path / "out"
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert (result["job"], result["round"]) == ("job-1", 1)  # round 0 is the statistics round
    # the thread started inside the window counts; the lambdas and the comprehension do not
    assert result["silo_out"]["names"] == ["crypto.engine:stream", "crypto.engine:encrypt", "crypto.engine:_checked"]
    assert result["aggregator"]["names"] == [
        "aggregator.service:open_header",
        "crypto.engine:encrypt",
        "crypto.engine:_checked",
        "crypto.engine:decrypt",
    ]
    assert result["silo_back"]["names"] == ["crypto.engine:decrypt"]  # not crypto.lazy's module or class body
    assert result["aggregator"]["modules"] == 2 and result["aggregator"]["role_functions"] == 1
    assert result["total"] == 8
    assert json.loads(out.read_text())[0]["total"] == 8


def test_a_side_the_profiler_did_not_see_fails_the_run(tmp_path: Path) -> None:
    """No download window (as if a renamed servicer method went unseen): an error, not a shorter count."""
    files = {**FILES, "cipherfed/__main__.py": FILES["cipherfed/__main__.py"].replace("DownloadAggregate(", "Upload(")}
    done = measure(tmp_path, files)
    assert done.returncode != 0
    assert "expected 2 windows of each kind" in done.stderr and "'download': 0" in done.stderr
