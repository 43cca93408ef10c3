"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    import os

    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()}


def emit(result: dict[str, Any], path: str | None) -> None:
    """Print the JSON result and write it to ``path`` when given."""
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


@contextlib.contextmanager
def workdir_for(given: Path | None, prefix: str) -> Iterator[Path]:
    """``--workdir`` when one is given (always kept), else a temporary directory, removed when the run
    succeeds and kept (its path printed) when it fails, for its logs. One round_overhead run leaves about
    3.5 GB of consortium state (keys, spools, aggregates, logs): thirty-odd runs filled this machine's disk."""
    if given is not None:
        yield given
        return
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    except BaseException:
        print(f"benchmark failed; its consortium (logs under */logs) is kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
