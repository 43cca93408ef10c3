"""``cipherfed aggregator start`` and ``cipherfed node start``: run a role's long-lived process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    agg = sub.add_parser("aggregator", help="the consortium service (coordinator)")
    agg_cmds = agg.add_subparsers(dest="aggregator_command", metavar="ACTION", required=True)
    start = agg_cmds.add_parser("start", help="serve until SIGTERM/SIGINT")
    start.add_argument("--config", type=Path, required=True, help="aggregator.toml")
    start.set_defaults(handler=_aggregator_start)

    node = sub.add_parser("node", help="a silo node (institution IT)")
    node_cmds = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    nstart = node_cmds.add_parser("start", help="dial out to the aggregator and work on jobs")
    nstart.add_argument("--config", type=Path, required=True, help="node.toml")
    nstart.set_defaults(handler=_node_start)
    register_node_extras(node_cmds)


def register_node_extras(node_cmds: Any) -> None:
    """Hook for node subcommands added by other modules (init, doctor)."""


def _aggregator_start(args: argparse.Namespace) -> int:
    from aggregator.server import run

    return run(args.config)


def _node_start(args: argparse.Namespace) -> int:
    from silo_node.daemon import run

    return run(args.config)
