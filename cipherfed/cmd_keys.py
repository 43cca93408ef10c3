"""``cipherfed keys``: the key custodian creates HE keys; the aggregator only relays wrapped copies."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="HE key custody (at the key-custodian silo)")
    cmds = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = cmds.add_parser("create", help="generate a key set, keep the secret here, wrap a copy to each member")
    create.add_argument("--config", type=Path, required=True, help="the custodian node's node.toml")
    create.add_argument(
        "--member-cert",
        type=Path,
        action="append",
        required=True,
        help="a member silo's certificate (repeat), as sent by the coordinator who signed it; each copy is "
        "wrapped to one certificate",
    )
    create.add_argument(
        "--scope",
        default="consortium",
        help='"consortium" or a job name: a new scope rotates the key for the jobs that use it',
    )
    create.add_argument(
        "--profile",
        choices=["sum", "compact"],
        default="sum",
        help='the HE profile the key serves: jobs with he_profile = "compact" need a compact key',
    )
    create.set_defaults(handler=_create)


def _create(args: argparse.Namespace) -> int:
    from audit.log import AuditLog, AuditSink
    from cipherfed import __version__
    from crypto import pki
    from silo_node.config import load_node_config
    from silo_node.custody import create_key

    config = load_node_config(args.config)
    log = AuditLog(
        config.audit_log or config.state_dir / "audit.jsonl",
        pki.load_private_key(config.tls.key),
        pki.load_certificate(config.tls.cert),
        __version__,
    )
    created = create_key(config, args.member_cert, args.scope, AuditSink(log, "cipherfed.keys"), profile=args.profile)
    log.close()
    print(f"HE key {created.fingerprint} (profile {args.profile}, scope {args.scope!r}) created")
    print(f"  secret export kept here: {created.secret_path} (0600)")
    print(f"  wrapped copies relayed via the aggregator for: {', '.join(created.members)}")
    print(f'use it in job specs: key_fingerprint = "{created.fingerprint}"')
    return 0
