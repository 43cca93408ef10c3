"""``cipherfed demo``: a whole consortium on this machine."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run a whole encrypted consortium on this machine")
    demo.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    print("cipherfed demo is not built yet", file=sys.stderr)
    return 2
