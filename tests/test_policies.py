"""Policy rules (each with an allowing and a denying case), DP calibration, and the policy CLI."""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from cipherfed.localconsortium import job_toml
from policies import dp
from policies.evaluate import evaluate_member, evaluate_release, evaluate_site, evaluate_submission
from policies.schema import ConsortiumPolicy, SitePolicy, load_policy
from protocol.jobspec import parse_job_spec
from protocol.tomlconfig import ConfigError

ROOT = Path(__file__).resolve().parent.parent
AGG = "a" * 64
ADMIN_FP, SILO_FP = "b" * 64, "c" * 64
MONDAY_NOON = dt.datetime(2026, 11, 16, 12, 0, tzinfo=dt.UTC)


def spec(**kw):
    base = dict(features=["age", "bp"], rounds=5)
    dp_section = kw.pop("dp", None)
    extra = kw.pop("extra", "")
    if dp_section:
        extra += f"[dp]\nepsilon = {dp_section[0]}\ndelta = {dp_section[1]}\n"
        kw.setdefault("scaling", "local")
    features = kw.pop("features", base["features"])
    participants = kw.pop("participants", ["h1", "h2", "h3"])
    return parse_job_spec(job_toml("j", participants, "f" * 32, features, extra=extra, **{"rounds": 5, **kw}))


def site(**kw):
    base = dict(kind="site", site="h1", trusted_aggregators=[AGG])
    return SitePolicy.model_validate({**base, **kw})


def rule(decision, name):
    return next(r for r in decision.rules if r.rule == name)


SITE_CASES = [
    # (rule, site overrides, allowing job, denying job, denying context)
    ("trusted aggregator", {}, {}, {}, {"aggregator_fingerprint": "d" * 64}),
    ("trusted consortium", {"trusted_consortia": ["C"]}, {}, {}, {"consortium": "Other"}),
    ("model", {"allowed_models": ["logreg"]}, {}, {"model": 'type = "mlp"\nhidden = [4]'}, {}),
    ("denied columns", {}, {}, {"features": ["age", "patient_name"]}, {}),
    ("allowed columns", {"allowed_columns": ["age", "bp", "label"]}, {}, {"features": ["age", "zip"]}, {}),
    ("minimum participants", {"min_participants": 3}, {}, {"participants": ["h1", "h2"]}, {}),
    ("HE profile", {}, {}, {"he_profile": "none"}, {}),
    ("rounds", {"max_rounds": 10}, {}, {"rounds": 11}, {}),
    ("local epochs", {"max_local_epochs": 2}, {}, {"local_epochs": 3}, {}),
    (
        "differential privacy",
        {"dp": {"required": True, "max_epsilon_per_job": 5, "total_budget": 10}},
        {"dp": (3, 1e-5)},
        {},
        {},
    ),
    (
        "epsilon per job",
        {"dp": {"max_epsilon_per_job": 5, "total_budget": 10}},
        {"dp": (3, 1e-5)},
        {"dp": (6, 1e-5)},
        {},
    ),
    (
        "delta",
        {"dp": {"max_epsilon_per_job": 5, "delta": 1e-5, "total_budget": 10}},
        {"dp": (3, 1e-5)},
        {"dp": (3, 1e-4)},
        {},
    ),
    (
        "privacy budget",
        {"dp": {"max_epsilon_per_job": 5, "total_budget": 10}},
        {"dp": (3, 1e-5)},
        {"dp": (3, 1e-5)},
        {"budget_spent": 8.0},
    ),
    (
        "time window",
        {"time_windows": [{"days": ["mon"], "start": "09:00", "end": "17:00"}]},
        {},
        {},
        {"now": MONDAY_NOON + dt.timedelta(hours=8)},
    ),
    ("job type", {"allowed_job_types": ["horizontal"]}, {}, None, {}),
]


@pytest.mark.parametrize(
    ("name", "overrides", "allow_job", "deny_job", "deny_ctx"), SITE_CASES, ids=[c[0] for c in SITE_CASES]
)
def test_each_site_rule_allows_and_denies_with_reason(name, overrides, allow_job, deny_job, deny_ctx):
    policy = site(**overrides)
    ctx = {"aggregator_fingerprint": AGG, "consortium": "C", "now": MONDAY_NOON}
    allowed = evaluate_site(policy, spec(**allow_job), **ctx)
    assert rule(allowed, name).passed, rule(allowed, name).why
    assert allowed.allowed, allowed.reasons
    if deny_job is None:  # job type: a vertical spec
        denied_spec = parse_job_spec(
            job_toml("v", ["h1", "h2", "h3"], "f" * 32, ["age"])
            .replace('partition = "horizontal"', 'partition = "vertical"')
            .replace('he_profile = "sum"', 'he_profile = "vertical"')
            .replace('label = "label"', 'label = "label"\nid = "pid"')
            + '\n[vertical]\nactive = "h1"\npassive = ["h2", "h3"]\n'
            + '[vertical.features]\nh1 = ["age"]\nh2 = ["bp"]\nh3 = ["hr"]\n'
        )
    else:
        denied_spec = spec(**deny_job)
    denied = evaluate_site(policy, denied_spec, **{**ctx, **deny_ctx})
    assert not rule(denied, name).passed
    assert not denied.allowed
    assert any(r.startswith(f"{name}:") for r in denied.reasons)  # the reason names the rule, in words


def consortium(**kw):
    base = dict(
        kind="consortium",
        consortium="C",
        members=[
            {"name": "coord", "role": "admin", "cert_fingerprint": ADMIN_FP},
            {"name": "h1", "role": "silo", "cert_fingerprint": SILO_FP},
            {"name": "h2", "role": "silo", "cert_fingerprint": "e" * 64},
            {"name": "h3", "role": "silo", "cert_fingerprint": "f" * 64},
        ],
    )
    return ConsortiumPolicy.model_validate({**base, **kw})


def test_consortium_submission_rules():
    ok = evaluate_submission(consortium(), spec(), "coord", ADMIN_FP)
    assert ok.allowed, ok.reasons
    assert not rule(evaluate_submission(consortium(), spec(), "coord", "0" * 64), "submitter").passed
    assert not rule(evaluate_submission(consortium(), spec(), "h1", SILO_FP), "submitter").passed
    assert not rule(
        evaluate_submission(consortium(), spec(participants=["h1", "h2", "x9"]), "coord", ADMIN_FP), "participants"
    ).passed
    none = evaluate_submission(consortium(), spec(he_profile="none"), "coord", ADMIN_FP)
    assert not none.allowed and "forbidden by the consortium" in " ".join(none.reasons)
    assert rule(
        evaluate_submission(
            consortium(allowed_he_profiles=["sum", "none"]), spec(he_profile="none"), "coord", ADMIN_FP
        ),
        "HE profile",
    ).passed
    assert not rule(evaluate_submission(consortium(max_rounds=3), spec(), "coord", ADMIN_FP), "rounds").passed
    assert not rule(
        evaluate_submission(consortium(min_silos_per_aggregate=4), spec(), "coord", ADMIN_FP), "release threshold"
    ).passed
    assert evaluate_member(consortium(), "h1", SILO_FP, "upload").allowed
    assert not evaluate_member(consortium(), "h1", "0" * 64, "upload").allowed  # same name, other certificate
    assert evaluate_release(3, ["h1", "h2", "h3"]).allowed
    released = evaluate_release(3, ["h1", "h2"])
    assert not released.allowed and "fewer than 3" in released.reasons[0]


def test_malformed_policy_files_name_field_and_reason(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'kind = "site"\nsite = "h1"\ntrusted_aggregators = ["xyz"]\nmin_he_profile = "best"\n'
        '[[time_windows]]\nstart = "25:00"\nend = "06:00"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_policy(bad)
    fields = {f for f, _ in err.value.problems}
    assert {"trusted_aggregators", "min_he_profile", "time_windows.0.start"} <= fields
    out = subprocess.run(
        [sys.executable, "-m", "cipherfed", "policy", "validate", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1 and "time_windows.0.start: Value error, use HH:MM" in out.stderr
    bad.write_text('kind = "consortium"\nconsortium = "C"\nmembers = []\nmin_silos_per_aggregate = 1\n')
    with pytest.raises(ConfigError) as err:
        load_policy(bad)
    assert {"members", "min_silos_per_aggregate"} <= {f for f, _ in err.value.problems}
    bad.write_text('kind = "other"\n')
    with pytest.raises(ConfigError, match="kind"):
        load_policy(bad)


def test_example_policies_are_valid():
    assert isinstance(load_policy(ROOT / "deploy" / "examples" / "site-policy.toml"), SitePolicy)
    assert isinstance(load_policy(ROOT / "deploy" / "examples" / "consortium-policy.toml"), ConsortiumPolicy)


def test_policy_check_cli_prints_each_rule_and_exit_code(tmp_path):
    job = tmp_path / "job.toml"
    site_file = tmp_path / "site.toml"
    site_file.write_text(f'kind = "site"\nsite = "h1"\ntrusted_aggregators = ["{AGG}"]\nmin_participants = 3\n')
    job.write_text(job_toml("j", ["h1", "h2", "h3"], "f" * 32, ["age", "bp"]))
    ok = subprocess.run(
        [sys.executable, "-m", "cipherfed", "policy", "check", str(job), "--site", str(site_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stdout
    assert "denied columns" in ok.stdout and "pass" in ok.stdout and "would be accepted" in ok.stdout
    job.write_text(job_toml("j", ["h1", "h2", "h3"], "f" * 32, ["age", "ssn"]))
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "cipherfed",
            "policy",
            "check",
            str(job),
            "--site",
            str(site_file),
            "--consortium",
            str(ROOT / "deploy" / "examples" / "consortium-policy.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "ssn (rule 'ssn')" in bad.stdout and "would be refused" in bad.stdout


def test_dp_spec_rules():
    with pytest.raises(ConfigError, match="federated scaling round"):
        parse_job_spec(job_toml("j", ["h1", "h2"], "f" * 32, ["a"], extra="[dp]\nepsilon = 1.0\n"))
    with pytest.raises(ConfigError, match="DP-SGD trains torch models"):
        parse_job_spec(
            job_toml(
                "j",
                ["h1", "h2"],
                "f" * 32,
                ["a"],
                scaling="local",
                model='type = "sklearn_sgd"',
                extra="[dp]\nepsilon = 1.0\n",
            )
        )


@pytest.mark.parametrize(
    ("epsilon", "rows", "batch", "epochs", "rounds"),
    [(3.0, 150, 16, 2, 10), (1.0, 5000, 64, 1, 20), (8.0, 400, 32, 3, 5)],
)
def test_noise_multiplier_is_the_accountants_calibration_within_one_percent(epsilon, rows, batch, epochs, rounds):
    job = spec(dp=(epsilon, 1e-5), batch_size=batch, local_epochs=epochs, rounds=rounds)
    plan = dp.plan(job, rows)
    batches = -(-rows // batch)
    assert plan.sample_rate == pytest.approx(1 / batches)
    assert plan.total_steps == rounds * epochs * batches
    independent = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=1e-5,
        sample_rate=1 / batches,
        steps=rounds * epochs * batches,
        accountant="rdp",
        alphas=dp.ALPHAS,
    )
    assert plan.noise_multiplier == pytest.approx(independent, rel=0.01)
    accountant = RDPAccountant()
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, plan.total_steps)]
    spent = accountant.get_epsilon(1e-5, alphas=dp.ALPHAS)
    assert epsilon * 0.99 <= spent <= epsilon * 1.0001


def test_silo_trains_with_exactly_the_planned_noise_multiplier():
    from silo_node.models import TorchAdapter

    job = spec(dp=(2.0, 1e-5), batch_size=16, local_epochs=1, rounds=4)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 2)), rng.integers(0, 2, 120)
    plan = dp.plan(job, len(x))
    adapter = TorchAdapter(job, 2)
    before = adapter.get_weights()
    history = []
    for r in range(job.rounds):
        steps, q = adapter.train_private(x, y, r, plan.noise_multiplier, plan.max_grad_norm)
        assert adapter.last_noise_multiplier == pytest.approx(plan.noise_multiplier)
        assert steps == plan.steps_per_round and q == pytest.approx(plan.sample_rate)
        history.append((plan.noise_multiplier, q, steps))
    assert any(not np.array_equal(before[k], v) for k, v in adapter.get_weights().items())
    assert dp.epsilon_spent(history, 1e-5) == pytest.approx(2.0, rel=0.01)
