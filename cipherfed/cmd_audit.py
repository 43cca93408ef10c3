"""``cipherfed audit``: verify, review and report on audit logs (compliance officer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from audit.report import write_report
from audit.review import details_text, select, to_csv, to_json
from audit.verify import load_records, verify_logs
from crypto import pki


def register(sub: Any) -> None:
    audit = sub.add_parser("audit", help="verify and review audit logs (compliance)")
    cmds = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = cmds.add_parser("verify", help="check chains, signatures and cross-party anchors")
    verify.add_argument("logs", nargs="+", type=Path)
    verify.add_argument("--ca", type=Path, help="consortium CA certificate: every signer must be issued by it")
    verify.set_defaults(handler=_verify)

    show = cmds.add_parser("show", help="list records, filtered")
    show.add_argument("logs", nargs="+", type=Path)
    show.add_argument("--job")
    show.add_argument("--event")
    show.add_argument("--actor")
    show.add_argument("--since", help="ISO time, e.g. 2026-11-20T10:00Z")
    show.add_argument("--until")
    show.add_argument("--format", choices=["table", "json", "csv"], default="table")
    show.set_defaults(handler=_show)

    report = cmds.add_parser("report", help="one self-contained HTML compliance report")
    report.add_argument("logs", nargs="+", type=Path)
    report.add_argument("-o", "--output", type=Path, required=True)
    report.add_argument("--ca", type=Path)
    report.set_defaults(handler=_report)


def _ca(path: Path | None) -> Any:
    return pki.load_certificate(path) if path else None


def _verify(args: argparse.Namespace) -> int:
    result = verify_logs(args.logs, _ca(args.ca))
    print(result.summary())
    for problem in result.problems[1:10]:
        print(f"  also: {problem}")
    return 0 if result.ok else 1


def _show(args: argparse.Namespace) -> int:
    records = select(
        load_records(args.logs), job=args.job, event=args.event, actor=args.actor, since=args.since, until=args.until
    )
    if args.format == "json":
        print(to_json(records))
    elif args.format == "csv":
        print(to_csv(records), end="")
    else:
        table = Table(title=f"{len(records)} audit records", title_justify="left")
        for column in ("time (UTC)", "party", "seq", "actor", "event", "job", "round", "details"):
            table.add_column(column, overflow="fold")
        for r in records:
            table.add_row(
                r["ts"][:23].replace("T", " "),
                r.get("party", ""),
                str(r["seq"]),
                r.get("actor", ""),
                r["event"],
                r.get("job") or "",
                "" if r.get("round") is None else str(r["round"]),
                details_text(r, 80),
            )
        Console(width=200).print(table)
    return 0


def _report(args: argparse.Namespace) -> int:
    result = write_report(args.logs, args.output, _ca(args.ca))
    print(result.summary())
    print(f"report written to {args.output}")
    return 0 if result.ok else 1
