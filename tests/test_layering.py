"""The packages' layering (docs/architecture.md): which of cipherfed's packages each may import.

The libraries at the bottom (crypto, protocol, policies, audit) never reach up into a role or the CLI,
so each can be read, tested and audited alone; the two roles (aggregator, silo_node) never import each
other, so neither can lean on the other's internals and shared code has to live in crypto/ or protocol/.
The check reads every import statement with ``ast``, including imports inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = {"crypto", "protocol", "policies", "audit"}
# What each package may import of the others (anything outside this project is not this test's business).
MAY_IMPORT: dict[str, set[str]] = {
    "crypto": set(),
    "protocol": {"crypto"},
    "policies": {"crypto", "protocol"},
    "audit": {"crypto", "protocol"},
    "aggregator": LIBRARIES,
    "silo_node": LIBRARIES,
    "cipherfed": LIBRARIES | {"aggregator", "silo_node"},
    "benchmarks": LIBRARIES | {"aggregator", "silo_node", "cipherfed"},
}


def imported_packages(source: str) -> set[str]:
    """The top-level names ``source`` imports absolutely (relative imports stay inside its package)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def layering_violations(root: Path) -> list[str]:
    violations = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            for target in sorted(imported_packages(path.read_text()) & set(MAY_IMPORT) - {package} - allowed):
                violations.append(f"{relative} imports {target}")
    return violations


def test_packages_import_only_the_layers_below_them():
    violations = layering_violations(ROOT)
    assert not violations, "layering (docs/architecture.md) broken:\n" + "\n".join(violations)


def test_the_roles_never_import_each_other_or_the_cli():
    """The rules the issue names, spelled out so that widening MAY_IMPORT cannot drop them silently."""
    for role, other in (("aggregator", "silo_node"), ("silo_node", "aggregator")):
        assert other not in MAY_IMPORT[role] and "cipherfed" not in MAY_IMPORT[role]
    for library in LIBRARIES:
        assert not MAY_IMPORT[library] & {"aggregator", "silo_node", "cipherfed", "benchmarks"}


def test_the_version_is_one_value_readable_without_the_cli():
    import cipherfed
    from protocol.version import __version__

    assert cipherfed.__version__ == __version__
    assert "cipherfed" not in imported_packages((ROOT / "protocol" / "version.py").read_text())


def test_the_check_sees_imports_anywhere_in_a_module():
    source = "import os\nfrom silo_node.data import x\ndef f():\n    import aggregator.store\n    from . import y\n"
    assert imported_packages(source) == {"os", "silo_node", "aggregator"}


def _grpc_bound(source: str) -> bool:
    """Whether a module imports grpc or the generated stubs (protocol.cipherfed_pb2*)."""
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        if any(n.split(".")[0] == "grpc" or n.startswith("protocol.cipherfed_pb2") for n in names):
            return True
    return False


def test_role_files_stay_small_and_the_aggregator_mostly_free_of_grpc():
    """Issue 12's limits: no file under aggregator/ or silo_node/ over 450 lines; files that import grpc or the
    generated stubs hold at most 40% of the aggregator's lines; its round core imports neither."""
    lines: dict[str, int] = {}
    bound: set[str] = set()
    for package in ("aggregator", "silo_node"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative, source = path.relative_to(ROOT).as_posix(), path.read_text()
            lines[relative] = len(source.splitlines())
            if _grpc_bound(source):
                bound.add(relative)
    assert not {f: n for f, n in lines.items() if n > 450}, "split the file: one job per module"
    aggregator = {f: n for f, n in lines.items() if f.startswith("aggregator/")}
    share = sum(n for f, n in aggregator.items() if f in bound) / sum(aggregator.values())
    assert share <= 0.40, f"{share:.1%} of the aggregator's lines are in grpc-bound files"
    assert not {f for f in bound if f.startswith("aggregator/core/")}
    assert "aggregator/edge/servicer.py" in bound  # the check sees the edge, which must import them
