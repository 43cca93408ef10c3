"""Every `cipherfed` command in the docs parses with the real command line (the flows run in other tests)."""

import re
import shlex
from pathlib import Path

import pytest

from cipherfed.cli import build_parser

DOCS = Path(__file__).resolve().parent.parent / "docs"


def doc_commands():
    commands = []
    for doc in sorted(DOCS.glob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.split("  #")[0].strip()
                command = re.split(r" (?:\||>>?) ", command)[0]  # the cipherfed part of `... | tee f`, `... >> f`
                if command.startswith("cipherfed "):
                    commands.append(pytest.param(command, id=f"{doc.name}: {command[:60]}"))
    return commands


def test_docs_hold_the_main_commands():
    text = " ".join(p.values[0] for p in doc_commands())
    for needed in (
        "node init",
        "ca sign",
        "node doctor",
        "keys create",
        "ca revoke",
        "job submit",
        "audit verify",
        "audit report",
        "policy check",
        "aggregator start",
    ):
        assert f"cipherfed {needed}" in text, needed


@pytest.mark.parametrize("command", doc_commands())
def test_documented_command_parses(command):
    args = shlex.split(command)[1:]
    parsed = build_parser().parse_args(args)  # SystemExit (test error) on any stale flag or subcommand
    assert callable(parsed.handler)
