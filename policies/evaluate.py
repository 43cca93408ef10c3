"""Evaluating jobs, uploads and releases against consortium and site policies.

Nothing here touches data: a site decides from the job spec (which columns, which model, which
privacy guarantees), the aggregator's certificate and the privacy budget already spent, so a job
can be declined before a single row is read.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Iterable

from policies.decision import Decision
from policies.schema import DAYS, HE_ORDER, ConsortiumPolicy, SitePolicy, TimeWindow
from protocol.jobspec import JobSpec, secagg_policy


def job_columns(spec: JobSpec, site: str | None = None) -> list[str]:
    """The columns this site would read: its own share in a vertical job, all of them in a horizontal one."""
    return spec.party_columns(site or "")


def _matches(column: str, patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatch(column.lower(), pattern.lower()):
            return pattern
    return None


def in_window(windows: list[TimeWindow], now: dt.datetime) -> bool:
    if not windows:
        return True
    day = DAYS[now.weekday()]
    minutes = now.hour * 60 + now.minute
    for w in windows:
        start = int(w.start[:2]) * 60 + int(w.start[3:])
        end = int(w.end[:2]) * 60 + int(w.end[3:])
        inside = start <= minutes < end if start <= end else (minutes >= start or minutes < end)
        if day in w.days and inside:
            return True
    return False


def evaluate_site(
    policy: SitePolicy,
    spec: JobSpec,
    *,
    aggregator_fingerprint: str | None,
    consortium: str,
    budget_spent: float = 0.0,
    now: dt.datetime | None = None,
    stage: str = "job offered",
) -> Decision:
    """Would this site take part in this job (or this round of it)?"""
    d = Decision(stage)
    now = now or dt.datetime.now(dt.UTC)
    if aggregator_fingerprint is None:
        d.check("trusted aggregator", True, "not checked (dry run without an aggregator connection)", "")
    else:
        d.check(
            "trusted aggregator",
            aggregator_fingerprint in policy.trusted_aggregators,
            f"aggregator certificate {aggregator_fingerprint[:16]}... is trusted",
            f"aggregator certificate {aggregator_fingerprint[:16]}... is not in trusted_aggregators",
        )
    d.check(
        "trusted consortium",
        not policy.trusted_consortia or consortium in policy.trusted_consortia,
        f"consortium {consortium!r} is trusted" if policy.trusted_consortia else "any consortium is accepted",
        f"consortium {consortium!r} is not in trusted_consortia",
    )
    d.check(
        "job type",
        spec.partition in policy.allowed_job_types,
        f"{spec.partition} jobs are allowed",
        f"{spec.partition} jobs are not allowed (allowed: {', '.join(policy.allowed_job_types)})",
    )
    d.check(
        "model",
        spec.model.type in policy.allowed_models,
        f"model {spec.model.type!r} is allowed",
        f"model {spec.model.type!r} is not allowed (allowed: {', '.join(policy.allowed_models)})",
    )
    if spec.model.type == "factory":
        d.check(
            "model factory",
            spec.model.factory in policy.allowed_factories,
            f"factory {spec.model.factory!r} is in allowed_factories",
            f"factory {spec.model.factory!r} is not in this site's allowed_factories "
            f"({', '.join(policy.allowed_factories) or 'none listed'}); a site runs only code it names",
        )
    columns = job_columns(spec, policy.site)
    denied = {c: p for c in columns if (p := _matches(c, policy.denied_columns))}
    d.check(
        "denied columns",
        not denied,
        f"none of the {len(columns)} requested columns is denied",
        "requested columns are denied by this site: " + ", ".join(f"{c} (rule {p!r})" for c, p in denied.items()),
    )
    if policy.allowed_columns is not None:
        outside = [c for c in columns if not _matches(c, policy.allowed_columns)]
        d.check(
            "allowed columns",
            not outside,
            "every requested column is on the allowed list",
            f"columns not on the allowed list: {', '.join(outside)}",
        )
    d.check(
        "minimum participants",
        len(spec.participants) >= policy.min_participants,
        f"{len(spec.participants)} participants (site needs at least {policy.min_participants})",
        f"only {len(spec.participants)} participants; this site needs at least {policy.min_participants} so its "
        f"contribution is hidden in a sum",
    )
    d.check(
        "minimum contributors",
        len(spec.participants) >= policy.min_contributors,
        f"{len(spec.participants)} participants can make aggregates of the site's minimum {policy.min_contributors}",
        f"only {len(spec.participants)} participants; this site applies no aggregate of fewer than "
        f"{policy.min_contributors} contributors",
    )
    d.check(
        "HE profile",
        HE_ORDER[spec.he_profile] >= HE_ORDER[policy.min_he_profile],
        f"updates are protected by HE profile {spec.he_profile!r}",
        f"HE profile {spec.he_profile!r} is weaker than this site's minimum {policy.min_he_profile!r}",
    )
    _check_site_secagg(d, policy, spec)
    d.check(
        "rounds",
        spec.rounds <= policy.max_rounds,
        f"{spec.rounds_description} (max {policy.max_rounds} training rounds)",
        f"{spec.rounds_description}: {spec.rounds} training rounds exceed this site's maximum of {policy.max_rounds}",
    )
    d.check(
        "local epochs",
        spec.local_epochs <= policy.max_local_epochs,
        f"{spec.local_epochs} local epochs (max {policy.max_local_epochs})",
        f"{spec.local_epochs} local epochs exceeds this site's maximum of {policy.max_local_epochs}",
    )
    _dp_rules(d, policy, spec, budget_spent)
    d.check(
        "time window",
        in_window(policy.time_windows, now),
        "within an allowed time window" if policy.time_windows else "no time restriction",
        f"{now:%a %H:%M} UTC is outside this site's time windows",
    )
    return d


def evaluate_without_site_policy(spec: JobSpec, stage: str = "job offered") -> Decision:
    """What a node with no site policy refuses: anything that needs a privacy officer's explicit yes.

    Without a site policy a node runs no job-supplied code (model factories) and sends no
    plaintext updates (``he_profile = "none"``): both need a site policy that allows them.
    """
    d = Decision(stage)
    d.check(
        "model factory",
        spec.model.type != "factory",
        "no model factory (built-in model)",
        f"factory {spec.model.factory!r}: this node has no site policy, so it imports no job-supplied code; "
        "list the factory in a site policy's allowed_factories to allow it",
    )
    d.check(
        "HE profile",
        spec.he_profile != "none",
        f"updates are protected by HE profile {spec.he_profile!r}",
        "he_profile 'none' sends plaintext updates; this node has no site policy, so it refuses it; "
        'set min_he_profile = "none" in a site policy to allow plaintext comparison runs',
    )
    return d


def _dp_rules(d: Decision, policy: SitePolicy, spec: JobSpec, spent: float) -> None:
    site = policy.dp
    if site is None:
        d.check(
            "differential privacy",
            True,
            "not required by this site" + (f"; the job uses epsilon {spec.dp.epsilon}" if spec.dp else ""),
            "",
        )
        return
    if spec.dp is None:
        d.check(
            "differential privacy",
            not site.required,
            "not required by this site",
            "this site requires differential privacy and the job has no [dp] section",
        )
        return
    d.check(
        "differential privacy",
        True,
        f"the job trains with DP-SGD (epsilon {spec.dp.epsilon}, delta {spec.dp.delta:g}, "
        f"clipping {spec.dp.max_grad_norm})",
        "",
    )
    d.check(
        "epsilon per job",
        spec.dp.epsilon <= site.max_epsilon_per_job,
        f"job epsilon {spec.dp.epsilon} <= site maximum {site.max_epsilon_per_job}",
        f"job epsilon {spec.dp.epsilon} exceeds this site's maximum of {site.max_epsilon_per_job} per job",
    )
    d.check(
        "delta",
        spec.dp.delta <= site.delta,
        f"job delta {spec.dp.delta:g} <= {site.delta:g}",
        f"job delta {spec.dp.delta:g} exceeds this site's maximum of {site.delta:g}",
    )
    remaining = site.total_budget - spent
    d.check(
        "privacy budget",
        spec.dp.epsilon <= remaining + 1e-12,
        f"epsilon {spec.dp.epsilon} fits the remaining budget {remaining:.3f} of {site.total_budget}",
        f"epsilon {spec.dp.epsilon} would exceed the dataset's budget: {spent:.3f} of {site.total_budget} already "
        f"spent, {max(remaining, 0):.3f} left",
    )


def evaluate_submission(
    policy: ConsortiumPolicy, spec: JobSpec, submitter: str, submitter_fingerprint: str
) -> Decision:
    """The aggregator's one decision on a submission; ``cipherfed policy check`` calls exactly this."""
    d = Decision("job submitted")
    refusal = _submitter_refusal(policy, submitter, submitter_fingerprint)
    d.check(
        "submitter",
        refusal is None,
        f"{submitter} is an admin member allowed to submit jobs",
        f"{submitter} may not submit jobs: {refusal}",
    )
    silos = {m.name for m in policy.members if m.role == "silo"}
    strangers = [p for p in spec.participants if p not in silos]
    d.check(
        "participants",
        not strangers,
        "every participant is a silo member of the consortium",
        f"not silo members of the consortium: {', '.join(strangers)}",
    )
    d.check(
        "HE profile",
        spec.he_profile in policy.allowed_he_profiles,
        f"HE profile {spec.he_profile!r} is allowed",
        f"HE profile {spec.he_profile!r} is forbidden by the consortium "
        f"(allowed: {', '.join(policy.allowed_he_profiles)})",
    )
    if spec.model.type == "factory":
        d.check(
            "model factory",
            spec.model.factory in policy.allowed_factories,
            f"factory {spec.model.factory!r} is in the consortium's allowed_factories",
            f"model.factory {spec.model.factory!r} is not in the consortium's allowed_factories "
            f"({', '.join(policy.allowed_factories) or 'none listed'})",
        )
    d.check(
        "rounds",
        spec.total_rounds <= policy.max_rounds,
        f"{spec.rounds_description} (max {policy.max_rounds} rounds in all)",
        f"{spec.rounds_description} exceeds the consortium maximum of {policy.max_rounds} rounds in all",
    )
    _check_consortium_secagg(d, policy, spec)
    threshold = policy.min_silos_per_aggregate
    vertical = spec.partition == "vertical"
    d.check(
        "release threshold",
        vertical or len(spec.participants) >= threshold,
        "vertical job: no model aggregate is released; the aggregator only sums passive partial scores for the "
        "active party"
        if vertical
        else f"aggregates need at least {threshold} contributors; the job has {len(spec.participants)} participants",
        f"the job has {len(spec.participants)} participants but no aggregate is released with fewer than "
        f"{threshold} contributors",
    )
    return d


def _secagg_terms(spec: JobSpec) -> str:
    policy = secagg_policy(spec)
    graph = "complete graph" if policy.neighbours is None else f"{policy.neighbours} neighbours each"
    return f"threshold {policy.threshold}, at least {policy.min_participants} silos, {graph}"


def _check_site_secagg(d: Decision, policy: SitePolicy, spec: JobSpec) -> None:
    """A site that requires secure aggregation joins only masked horizontal jobs with a threshold it accepts."""
    if spec.partition != "horizontal" or not (policy.require_secure_aggregation or spec.secure_aggregation):
        return
    if not spec.secure_aggregation:
        d.check(
            "secure aggregation",
            False,
            "",
            'this site requires secure aggregation (set secure_aggregation = true, he_profile = "compact")',
        )
        return
    threshold = secagg_policy(spec).threshold
    d.check(
        "secure aggregation",
        threshold >= policy.min_secagg_threshold,
        f"updates are masked (secure aggregation: {_secagg_terms(spec)})",
        f"secagg.threshold {threshold} is below this site's min_secagg_threshold {policy.min_secagg_threshold}",
    )


def _check_consortium_secagg(d: Decision, policy: ConsortiumPolicy, spec: JobSpec) -> None:
    """The consortium's floor on secure aggregation: required or not, and the weakest terms it accepts."""
    rules = policy.secure_aggregation
    if spec.partition != "horizontal":
        return
    if not spec.secure_aggregation:
        if rules.required:
            d.check(
                "secure aggregation",
                False,
                "",
                'the consortium requires secure aggregation: set secure_aggregation = true (he_profile = "compact")',
            )
        return
    terms = secagg_policy(spec)
    problems = []
    if terms.threshold < rules.min_threshold:
        problems.append(
            f"secagg.threshold {terms.threshold} is below the consortium's min_threshold {rules.min_threshold}"
        )
    if terms.min_participants < rules.min_participants:
        problems.append(
            f"secagg.min_participants {terms.min_participants} is below the consortium's {rules.min_participants}"
        )
    if rules.min_neighbours is not None and terms.neighbours is not None and terms.neighbours < rules.min_neighbours:
        problems.append(
            f"secagg.neighbours {terms.neighbours} is below the consortium's min_neighbours {rules.min_neighbours}"
        )
    d.check(
        "secure aggregation",
        not problems,
        f"updates are masked (secure aggregation: {_secagg_terms(spec)})",
        "; ".join(problems),
    )


def _submitter_refusal(policy: ConsortiumPolicy, submitter: str, fingerprint: str) -> str | None:
    """Why this certificate may not submit, in the words a coordinator can act on (None: it may)."""
    member = policy.member(submitter)
    if member is None:
        return "not a member of the consortium policy"
    if member.role != "admin":
        return f"a {member.role} member, not an admin"
    if member.cert_fingerprint != fingerprint:
        shown = fingerprint[:16] + "..." if fingerprint else "(no certificate given)"
        return (
            f"its certificate {shown} is not the one pinned in the policy ({member.cert_fingerprint[:16]}...); "
            "pin the output of `cipherfed ca fingerprint` for this certificate"
        )
    if policy.job_submitters and submitter not in policy.job_submitters:
        return "not in job_submitters"
    return None


def evaluate_member(policy: ConsortiumPolicy, name: str, fingerprint: str, stage: str) -> Decision:
    d = Decision(stage)
    member = policy.member(name)
    d.check(
        "membership",
        member is not None and member.role == "silo" and member.cert_fingerprint == fingerprint,
        f"{name} is a silo member with the registered certificate",
        f"{name} is not a silo member of the consortium with this certificate",
    )
    return d


def evaluate_release(threshold: int, contributors: list[str]) -> Decision:
    d = Decision("aggregate release")
    d.check(
        "release threshold",
        len(contributors) >= threshold,
        f"{len(contributors)} contributors (at least {threshold} required)",
        f"only {len(contributors)} contributors; no aggregate is released with fewer than {threshold}",
    )
    return d
