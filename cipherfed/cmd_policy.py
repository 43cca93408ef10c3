"""``cipherfed policy``: validate policy files and dry-run a job against them (privacy officer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crypto import pki
from policies.decision import Decision
from policies.evaluate import evaluate_site, evaluate_submission
from policies.schema import (
    ConsortiumPolicy,
    load_consortium_policy,
    load_policy,
    load_site_policy,
    placeholder_problems,
)
from protocol.jobspec import JobSpec, parse_job_spec


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="site and consortium policies (privacy officer)")
    cmds = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    validate = cmds.add_parser("validate", help="check a policy file: exit 0, or 1 with field-level errors")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=_validate)

    check = cmds.add_parser("check", help="dry run: would this site (and consortium) accept the job, and why")
    check.add_argument("job", type=Path, help="job.toml")
    check.add_argument("--site", type=Path, help="site policy (the site's side of the dry run)")
    check.add_argument("--consortium", type=Path, help="consortium policy")
    check.add_argument("--aggregator-cert", type=Path, help="aggregator certificate to check against the site's pins")
    check.add_argument("--consortium-name", default=None, help="consortium name (default: from the policy)")
    check.add_argument(
        "--submitter-cert",
        type=Path,
        default=None,
        help="the submitting admin's certificate (admin/coordinator.crt): the aggregator checks its name and "
        "fingerprint, so the dry run does too; without it the submitter rule fails",
    )
    check.add_argument("--budget-spent", type=float, default=0.0, help="epsilon already spent on the dataset")
    check.set_defaults(handler=_check)


def _validate(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)  # raises ConfigError with field-level problems -> exit 1
    problems = placeholder_problems(policy)
    if problems:  # structurally valid, but it pins nobody: refuse it before anyone relies on it
        print(f"{args.file}: not usable yet:")
        for p in problems:
            print(f"  {p}")
        return 1
    if isinstance(policy, ConsortiumPolicy):
        print(
            f"{args.file}: valid consortium policy for {policy.consortium!r} ({len(policy.members)} members, "
            f"aggregates need >= {policy.min_silos_per_aggregate} contributors)"
        )
    else:
        dp = (
            f"DP required, <= {policy.dp.max_epsilon_per_job} epsilon per job, budget {policy.dp.total_budget}"
            if policy.dp and policy.dp.required
            else "DP optional"
        )
        print(
            f"{args.file}: valid site policy for {policy.site!r} ({len(policy.denied_columns)} denied column "
            f"patterns, minimum HE profile {policy.min_he_profile!r}, {dp})"
        )
    return 0


def _render(decision: Decision, title: str, console: Console) -> None:
    table = Table(title=f"{title}: {'ACCEPT' if decision.allowed else 'REFUSE'}", title_justify="left")
    table.add_column("rule")
    table.add_column("result")
    table.add_column("why", overflow="fold")
    for r in decision.rules:
        table.add_row(r.rule, "[green]pass[/]" if r.passed else "[red]FAIL[/]", r.why)
    console.print(table)


def _check(args: argparse.Namespace) -> int:
    console = Console(width=140)
    spec = parse_job_spec(args.job.read_text(), str(args.job))
    consortium_policy = load_consortium_policy(args.consortium) if args.consortium else None
    if args.site is None and consortium_policy is None:
        raise ValueError("give --site SITE_POLICY, --consortium CONSORTIUM_POLICY, or both")
    allowed = True
    if args.site is not None:
        site = load_site_policy(args.site)
        name = args.consortium_name or (consortium_policy.consortium if consortium_policy else "")
        fingerprint = (
            pki.certificate_fingerprint(pki.load_certificate(args.aggregator_cert)) if args.aggregator_cert else None
        )
        decision = evaluate_site(
            site,
            spec,
            aggregator_fingerprint=fingerprint,
            consortium=name,
            budget_spent=args.budget_spent,
            stage="dry run",
        )
        _render(decision, f"site {site.site}", console)
        allowed = decision.allowed
    if consortium_policy is not None:
        allowed = _check_consortium(consortium_policy, spec, args.submitter_cert, console) and allowed
    console.print("[green]the job would be accepted[/]" if allowed else "[red]the job would be refused[/]")
    return 0 if allowed else 1


def _check_consortium(policy: ConsortiumPolicy, spec: JobSpec, submitter_cert: Path | None, console: Console) -> bool:
    """The aggregator's own evaluation, fed what the aggregator would see: the submitter's certificate."""
    problems = placeholder_problems(policy)
    if problems:
        table = Table(title=f"consortium policy {policy.consortium}: REFUSE (the aggregator will not load it)")
        table.add_column("problem", overflow="fold")
        for p in problems:
            table.add_row(f"[red]FAIL[/] {p}")
        console.print(table)
        return False
    if submitter_cert is None:
        submitter, fingerprint = "(no --submitter-cert)", ""
    else:
        cert = pki.load_certificate(submitter_cert)
        submitter, fingerprint = pki.common_name(cert), pki.certificate_fingerprint(cert)
    decision = evaluate_submission(policy, spec, submitter, fingerprint)
    _render(decision, f"consortium {policy.consortium}", console)
    return decision.allowed
