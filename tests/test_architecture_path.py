"""docs/architecture.md names, hop by hop, every function one update passes through; each name must exist.

A newcomer follows that list literally, from file to file. When a refactor renames or moves a function
and the page is not updated, this test names the hop that no longer exists. Names are read the way the
page writes them: ``module.Class.method`` (the module's path may be shortened from the left, e.g.
``core.rounds`` for ``aggregator/core/rounds.py``), ``Class.method`` in a module named earlier in the
same list or defined by one module only, or ``.method`` of the class named last.
"""

from __future__ import annotations

import ast
import re
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "architecture.md"
PACKAGES = ("silo_node", "aggregator", "crypto", "protocol", "policies", "audit")
HOP = re.compile(r"(\d+) (?:\[[cp]\] )?`(?:\[[cp]\] )?(\.?[A-Za-z_][\w.]*)`")


@cache
def definitions(path: Path) -> frozenset[str]:
    """Every function ``path`` defines, by qualified name: its functions and the methods of its classes."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names |= {
                f"{node.name}.{item.name}"
                for item in node.body
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return frozenset(names)


@cache
def modules() -> dict[str, Path]:
    """Every module of the project's packages, by its dotted name (``aggregator.core.rounds``)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[dotted.removesuffix(".__init__")] = path
    return found


def resolve(name: str, context: list[Path]) -> tuple[Path, str] | None:
    """The module that defines ``name`` and the name inside it, read as the page writes it; ``context``:
    the modules named before it."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest module prefix first: a.b.C.f, then a.b + C.f, ...
        prefix, qualname = ".".join(parts[:split]), ".".join(parts[split:])
        owners = [
            path
            for dotted, path in modules().items()
            if (dotted == prefix or dotted.endswith("." + prefix)) and qualname in definitions(path)
        ]
        assert len(owners) <= 1, f"{name} names a function of {len(owners)} modules: write more of the module's path"
        if owners:
            return owners[0], qualname
    for path in reversed(context):  # Class.method or function of a module named earlier
        if name in definitions(path):
            return path, name
    if "." in name:  # Class.method defined by exactly one module of the project
        owners = [path for path in modules().values() if name in definitions(path)]
        if len(owners) == 1:
            return owners[0], name
    return None


def hops(section: str) -> list[tuple[int, str]]:
    text = PAGE.read_text()
    start = text.index(f"**{section}**")
    end = text.find("\n\n", start)
    return [(int(number), name) for number, name in HOP.findall(text[start:end])]


def check_section(section: str) -> tuple[int, list[str]]:
    listed = hops(section)
    missing, context, last_class = [], [], ""
    for number, name in listed:
        if name.startswith("."):
            name = last_class + name
        found = resolve(name, context)
        if found is None:
            missing.append(f"{section} hop {number}: {name}")
            continue
        path, qualname = found
        context.append(path)
        if "." in qualname:  # Class.method: a following ".other" is another method of that class
            last_class = name[: len(name) - len(qualname)] + qualname.split(".")[0]
    numbers = [number for number, _ in listed]
    assert numbers == list(range(1, len(listed) + 1)), f"{section}: hops are not numbered 1..n: {numbers}"
    return len(listed), missing


def test_every_hop_the_page_names_is_a_function_of_this_repository():
    problems = []
    for section in ("Silo, out", "Aggregator", "Silo, back"):
        count, missing = check_section(section)
        assert count >= 10, f"{section}: only {count} hops read; has the page's format changed?"
        problems += missing
    assert not problems, "docs/architecture.md names hops the code no longer has:\n" + "\n".join(problems)


def test_a_renamed_function_is_caught():
    """The check itself can fail: a hop whose function does not exist is reported."""
    assert resolve("core.rounds.RoundCore.receive", []) is not None
    assert resolve("core.rounds.RoundCore.no_such_step", []) is None
    assert resolve("Upload.feed", [ROOT / "aggregator" / "core" / "uploads.py"]) is not None
    assert resolve("Upload.no_such_step", [ROOT / "aggregator" / "core" / "uploads.py"]) is None
    assert resolve("encrypt", []) is None  # a bare name of no module named before
    assert resolve("core.uploads.Upload", []) is None  # a class is not a hop; its methods are


def test_a_name_two_modules_could_mean_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for package in ("aggregator", "silo_node"):
        (tmp_path / f"{package}_keys.py").write_text("class Keys:\n    def get(self): ...\n")
    found = {f"{p}.keys": tmp_path / f"{p}_keys.py" for p in ("aggregator", "silo_node")}
    monkeypatch.setattr(sys.modules[__name__], "modules", lambda: found)
    with pytest.raises(AssertionError, match="names a function of 2 modules"):
        resolve("keys.Keys.get", [])
    assert resolve("silo_node.keys.Keys.get", []) == (found["silo_node.keys"], "Keys.get")
    assert resolve("core.rounds.no_such_function", []) is None
