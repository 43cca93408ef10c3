"""One vocabulary: no module but ``protocol/vocabulary.py`` spells a job/round status or a relay kind.

A status written as a literal in two places drifts: the writer renames it, the reader still branches
on the old word, and a job that failed looks like one that is still running. The scan reads the
source with ``ast``, so prose (docstrings, comments, f-strings, log text) never counts; it flags a
status word only where code uses it as a value: compared, assigned, passed as a keyword, stored as a
dict value, chosen by a conditional expression, or returned (directly or inside a tuple, list or set in those places). Relay kinds are
single letters, so they are flagged only where code uses them as a kind: as an argument of a relay
call, as ``kind=``, or compared with something named ``kind``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from protocol.vocabulary import JobStatus, RelayKind, RoundStatus

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crypto", "protocol", "policies", "audit", "aggregator", "silo_node", "cipherfed", "benchmarks")
EXCLUDED = {Path("protocol/vocabulary.py")}

STATUS_WORDS = {str(s) for s in (*JobStatus, *RoundStatus)}
KIND_WORDS = {str(k) for k in RelayKind}
RELAY_CALLS = {"send", "send_blob", "receive", "receive_blob", "receive_json", "relay_put", "relay_peek", "relay_take"}
CONTAINERS = (ast.Tuple, ast.List, ast.Set)


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _context(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[ast.AST, ast.AST | None]:
    """The node (or the tuple/list/set holding it) and the first parent that is not such a container."""
    child, parent = node, parents.get(node)
    while isinstance(parent, CONTAINERS):
        child, parent = parent, parents.get(parent)
    return child, parent


def _status_use(child: ast.AST, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.Compare | ast.keyword | ast.Return):
        return True
    if isinstance(parent, ast.IfExp):  # a value chosen between: `... if end else "running"`
        return child is not parent.test
    if isinstance(parent, ast.Assign | ast.AnnAssign | ast.AugAssign):
        return child is parent.value
    if isinstance(parent, ast.Dict):  # a key names a field (e.g. a count of failed calls); a value is data
        return any(child is v for v in parent.values)
    return False


def _kind_use(node: ast.Constant, child: ast.AST, parent: ast.AST | None) -> bool:
    if isinstance(parent, ast.keyword):
        return parent.arg == "kind"
    if isinstance(parent, ast.Compare):
        return any("kind" in ast.unparse(operand) for operand in (parent.left, *parent.comparators))
    if isinstance(parent, ast.Call) and node in parent.args:
        func = parent.func
        return isinstance(func, ast.Attribute) and func.attr in RELAY_CALLS
    return False


def vocabulary_literals(source: str, name: str = "<source>") -> list[str]:
    """Each place ``source`` spells a status or relay kind as a value, as 'name:line: word (context)'."""
    tree = ast.parse(source)
    parents = _parents(tree)
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        child, parent = _context(node, parents)
        word = node.value
        if (word in STATUS_WORDS and _status_use(child, parent)) or (
            word in KIND_WORDS and _kind_use(node, child, parent)
        ):
            found.append((node.lineno, node.col_offset, f"{name}:{node.lineno}: {word!r} ({type(parent).__name__})"))
    return [text for _, _, text in sorted(found)]


def scan_tree(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root)
            if relative in EXCLUDED or path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
                continue
            found += vocabulary_literals(path.read_text(), str(relative))
    return found


def test_statuses_and_relay_kinds_are_spelled_only_in_the_vocabulary():
    found = scan_tree(ROOT)
    assert not found, "use protocol/vocabulary.py (JobStatus, RoundStatus, RelayKind) instead of:\n" + "\n".join(found)


def test_the_scan_flags_code_uses_and_leaves_prose_alone():
    code = '''
TERMINAL = ("completed", "failed", "aborted")
def f(task, relay, status, r):
    """A job that has failed or is running."""
    if task.job_status == "running":
        pass
    relay.send(to, "d", step, parts)
    record(status="aborted")
    ok = r.get("kind") in ("u", "p")
    label = f(1) if r else "running"
    return "closed"
'''
    prose = '''
def g(event, relay, failed):
    """Statuses: running, completed, failed."""
    log(f"the job is running, {failed} calls failed")
    level = event.endswith(("refused", "failed"))
    counts = {"failed": failed}
    name = "u"
    print("d", "running")
'''
    flagged = [line.split(": ", 1)[1] for line in vocabulary_literals(code)]
    assert flagged == [
        "'completed' (Assign)",
        "'failed' (Assign)",
        "'aborted' (Assign)",
        "'running' (Compare)",
        "'d' (Call)",
        "'aborted' (keyword)",
        "'u' (Compare)",
        "'p' (Compare)",
        "'running' (IfExp)",
        "'closed' (Return)",
    ]
    assert vocabulary_literals(prose) == []
