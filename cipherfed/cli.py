"""Entry point of ``cipherfed``: one subcommand group per role; each group lives in its own module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cipherfed import __version__, cmd_audit, cmd_ca, cmd_console, cmd_job, cmd_keys, cmd_policy, cmd_roles
from crypto.errors import CryptoError
from protocol.tomlconfig import ConfigError, missing_file_hint

Handler = Callable[[argparse.Namespace], int]


class UserError(Exception):
    """An error the person at the terminal can fix; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherfed",
        description="Homomorphic-encryption cross-silo federated learning: the aggregator sums ciphertexts "
        "it cannot decrypt.",
    )
    parser.add_argument("--version", action="version", version=f"cipherfed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cmd_ca.register(sub)
    cmd_roles.register(sub)
    cmd_job.register(sub)
    cmd_audit.register(sub)
    cmd_policy.register(sub)
    cmd_keys.register(sub)
    cmd_console.register(sub)
    from cipherfed import cmd_demo

    cmd_demo.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except FileNotFoundError as exc:
        print(f"cipherfed: error: {missing_file_hint(exc.filename or str(exc))}", file=sys.stderr)
        return 1
    except (UserError, ConfigError, CryptoError, PermissionError, ValueError) as exc:
        print(f"cipherfed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
