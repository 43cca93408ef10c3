"""Secure aggregation as job spec, consortium policy and site policy fields: validated with the field named."""

from __future__ import annotations

import pytest

from cipherfed.localconsortium import job_toml
from crypto.secagg.errors import EncodingError
from policies.evaluate import evaluate_site, evaluate_submission
from policies.schema import ConsortiumPolicy, ConsortiumSecAgg, SitePolicy
from protocol.jobspec import compact_params, parse_job_spec, secagg_policy
from protocol.secagg import ATTEMPTS_PER_ROUND, session_number
from protocol.tomlconfig import ConfigError

FP = "0" * 32
COLUMNS = ["x0", "x1"]


def _spec(n: int = 4, secagg: str | None = "", profile: str = "compact", compact: str = "weight_cap = 100") -> str:
    names = [f"silo-{i}" for i in range(n)]
    return job_toml(
        "j", names, FP, COLUMNS, he_profile=profile, scaling="local", compact=compact if profile == "compact" else "",
        secagg=secagg,
    )  # fmt: skip


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job_spec(text)
    return str(info.value)


def test_defaults_take_a_majority_threshold_and_masked_lanes():
    spec = parse_job_spec(_spec(4))
    policy = secagg_policy(spec)
    assert (policy.members, policy.threshold, policy.min_participants, policy.neighbours) == (4, 2, 3, None)
    params = compact_params(spec)
    assert params.secure_aggregation and params.layout.lanes_per_real == 2
    assert '"secure_aggregation":true' in params.describe()
    assert secagg_policy(parse_job_spec(_spec(9))).threshold == 5  # more than half of the 8 share holders


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (_spec(2), "at least 3 participating silos"),
        (_spec(4, "threshold = 1"), "secagg.threshold"),  # not more than half of 3 holders: masks unsafe
        (_spec(4, "threshold = 4"), "secagg.threshold"),  # more than the 3 holders: never recoverable
        (_spec(4, "min_participants = 2"), "min_participants"),
        (_spec(6, "neighbours = 3"), "secagg.neighbours"),  # odd
        (_spec(4, profile="sum"), 'he_profile = "compact"'),
        (_spec(4, secagg=None).replace("[compact]", "[secagg]\nthreshold = 2\n[compact]"), "secure_aggregation = true"),
        (_spec(4, compact="weight_cap = 2000000000"), "weight_cap"),  # beyond two 15-bit masked digits
        (_spec(4, "setup_timeout_s = inf"), "setup_timeout_s"),
    ],
)
def test_unsafe_or_impossible_settings_are_refused_naming_the_field(spec, words):
    assert words in _problems(spec)


def test_sessions_never_repeat_across_rounds_and_attempts():
    seen = {session_number(r, a) for r in range(5) for a in range(1, ATTEMPTS_PER_ROUND)}
    assert len(seen) == 5 * (ATTEMPTS_PER_ROUND - 1)
    with pytest.raises(EncodingError):
        session_number(0, ATTEMPTS_PER_ROUND)


def _consortium(**secagg) -> ConsortiumPolicy:
    members = [{"name": f"silo-{i}", "role": "silo", "cert_fingerprint": f"{i:x}" * 64} for i in range(6)]
    members.append({"name": "admin", "role": "admin", "cert_fingerprint": "a" * 64})
    return ConsortiumPolicy(
        kind="consortium", consortium="C", members=members, secure_aggregation=ConsortiumSecAgg(**secagg)
    )


def _rule(decision, name):
    return [r for r in decision.rules if r.rule == name]


def test_consortium_can_require_secure_aggregation_and_a_floor_on_its_terms():
    plain = parse_job_spec(_spec(4, secagg=None))
    masked = parse_job_spec(_spec(4))
    assert evaluate_submission(_consortium(), plain, "admin", "a" * 64).allowed
    refused = evaluate_submission(_consortium(required=True), plain, "admin", "a" * 64)
    assert not refused.allowed and "requires secure aggregation" in " ".join(refused.reasons)
    assert evaluate_submission(_consortium(required=True), masked, "admin", "a" * 64).allowed
    weak = evaluate_submission(_consortium(min_threshold=3), masked, "admin", "a" * 64)
    assert not weak.allowed and "secagg.threshold 2 is below the consortium's min_threshold 3" in " ".join(weak.reasons)
    strong = parse_job_spec(_spec(4, "threshold = 3"))
    assert evaluate_submission(_consortium(min_threshold=3), strong, "admin", "a" * 64).allowed


def test_site_can_require_secure_aggregation_and_a_minimum_threshold():
    site = SitePolicy(kind="site", site="silo-0", trusted_aggregators=["b" * 64], require_secure_aggregation=True)
    plain = parse_job_spec(_spec(4, secagg=None))
    decision = evaluate_site(site, plain, aggregator_fingerprint=None, consortium="C")
    assert not decision.allowed and "requires secure aggregation" in " ".join(decision.reasons)
    assert evaluate_site(site, parse_job_spec(_spec(4)), aggregator_fingerprint=None, consortium="C").allowed
    strict = site.model_copy(update={"min_secagg_threshold": 3})
    decision = evaluate_site(strict, parse_job_spec(_spec(4)), aggregator_fingerprint=None, consortium="C")
    assert not decision.allowed and "min_secagg_threshold 3" in " ".join(decision.reasons)
    shown = _rule(
        evaluate_site(site, parse_job_spec(_spec(4)), aggregator_fingerprint=None, consortium="C"), "secure aggregation"
    )
    assert shown and "threshold 2, at least 3 silos, complete graph" in shown[0].why
