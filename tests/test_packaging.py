"""The wheel (and so the container image) ships every package of the source tree.

An explicit package list once forgot new subpackages: the editable install used by the tests hid it,
and the image built from the wheel failed at start (`No module named 'aggregator.core'`).
"""

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def _source_packages() -> set[str]:
    found = set()
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in {"tests", "build", ".venv", "deploy", "docs"}:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        found.add(".".join(rel.parts))
    return found


def test_every_source_package_is_packaged():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = config["packages"]["find"]["include"]
    packaged = set(find_packages(where=str(ROOT), include=include))
    missing = _source_packages() - packaged
    assert not missing, f"not in the wheel: {sorted(missing)}; widen [tool.setuptools.packages.find] include"
    assert {"aggregator.core", "aggregator.edge", "crypto.hazmat", "crypto.secagg", "cipherfed.console"} <= packaged
