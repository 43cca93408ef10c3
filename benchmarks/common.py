"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import platform
import sys
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
