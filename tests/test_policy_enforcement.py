"""Policies enforced by real processes: the aggregator's consortium policy and the silos' site policies."""

import json
import time

import grpc
import pytest

from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from tests.helpers import breast_cancer_parts, rpc_code

pytestmark = pytest.mark.slow


def _fp(path):
    return pki.certificate_fingerprint(pki.load_certificate(path))


def _wait(stub, job, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = stub.GetJobStatus(pb.JobRef(job_id=job), timeout=10)
        if status.status != "running":
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job} still running: {status}")


def _events(consortium, name, event):
    path = consortium.nodes[name].dir / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if json.loads(line)["event"] == event]


@pytest.fixture(scope="module")
def governed(tmp_path_factory):
    names = ["h1", "h2", "h3", "h4"]
    c = LocalConsortium(tmp_path_factory.mktemp("gov"), names)
    c.provision()
    data, parts = breast_cancer_parts(4)
    for name, rows in zip(names, parts):
        c.write_data(name, data.x_train[rows], data.y_train[rows], data.columns)
    members = [("coordinator", "admin", c.admin_dir / "coordinator.crt")] + [
        (n, "silo", c.nodes[n].cert) for n in names
    ]
    policy = c.agg_dir / "consortium-policy.toml"
    policy.write_text(
        'kind = "consortium"\nconsortium = "Demo Health Consortium"\nmin_silos_per_aggregate = 3\n'
        'allowed_he_profiles = ["sum"]\n'
        + "".join(f'[[members]]\nname = "{n}"\nrole = "{r}"\ncert_fingerprint = "{_fp(p)}"\n' for n, r, p in members)
    )
    c.write_aggregator_config(extra='consortium_policy = "consortium-policy.toml"')
    c.start_aggregator()
    agg_fp = _fp(c.agg_dir / "aggregator.crt")
    sites = {
        "h1": "[dp]\nmax_epsilon_per_job = 3.0\ntotal_budget = 4.0\n",
        "h2": "",
        "h3": "",  # h3 additionally denies the first feature (see denied_columns below)
    }
    for name, extra in sites.items():
        denied = '["ssn", "f00*"]' if name == "h3" else '["ssn"]'
        site = c.nodes[name].dir / "site-policy.toml"
        site.write_text(
            f'kind = "site"\nsite = "{name}"\ntrusted_aggregators = ["{agg_fp}"]\n'
            f"denied_columns = {denied}\nmin_participants = 3\n{extra}"
        )
        c.write_node_config(name, extra='site_policy = "site-policy.toml"')
        if name == "h3":  # h3's data file is gone: a silo that read data before deciding would say so
            text = c.nodes[name].config.read_text().replace('path = "data.csv"', 'path = "missing.csv"')
            c.nodes[name].config.write_text(text)
        c.start_node(name)
    c.write_admin_config()  # h4 is never started: an offline participant
    yield c, data
    c.stop_all()


def test_consortium_forbids_plaintext_jobs(governed):
    c, data = governed
    spec = job_toml("plain", ["h1", "h2", "h3"], c.fingerprint, data.columns, he_profile="none")
    code, msg = rpc_code(lambda: c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "forbidden by the consortium" in msg


def test_denied_column_declines_before_data_is_touched(governed):
    c, data = governed
    stub = c.stub("coordinator")
    spec = job_toml("denied", ["h1", "h2", "h3"], c.fingerprint, data.columns, rounds=2, min_silos=2)
    job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10).job_id
    status = _wait(stub, job)
    assert status.status == "failed" and "h3 declined" in status.reason
    assert "f00_mean_radius (rule 'f00*')" in status.reason
    assert "h3" in status.declined
    declines = [e for e in _events(c, "h3", "job_declined") if e["job"] == job]
    assert declines and "denied columns" in declines[0]["details"]["reasons"][0]
    assert not [e for e in _events(c, "h3", "dataset_used") if e["job"] == job]  # no data was read
    assert "missing.csv" not in json.dumps(declines)
    decision = [e for e in _events(c, "h3", "policy_decision") if e["job"] == job][0]
    assert decision["details"]["allowed"] is False and len(decision["details"]["rules"]) >= 10
    assert c.processes["h3"].poll() is None  # the node keeps running


def test_aggregate_below_release_threshold_is_never_released(governed):
    c, data = governed
    stub = c.stub("coordinator")
    spec = job_toml(
        "thin",
        ["h1", "h2", "h4"],
        c.fingerprint,
        data.columns[1:],
        rounds=1,
        min_silos=2,
        round_timeout_s=15,  # ample time for h1 and h2; h4 is offline
        max_round_retries=0,
    )
    job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10).job_id
    status = _wait(stub, job)
    assert status.status == "failed"
    assert "release threshold: only 2 contributors; no aggregate is released with fewer than 3" in status.reason
    assert not list((c.agg_dir / "state" / "aggregates").glob(f"{job}/*.agg"))


def test_budget_exhausting_job_is_declined(governed):
    c, data = governed
    stub = c.stub("coordinator")
    dp = "[dp]\nepsilon = 3.0\ndelta = 1e-5\n"
    first = job_toml(
        "dp1",
        ["h1", "h2", "h4"],
        c.fingerprint,
        data.columns[1:],
        rounds=1,
        min_silos=2,
        scaling="local",
        extra=dp,
        round_timeout_s=300,
        max_round_retries=0,
    )
    job1 = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=first), timeout=10).job_id
    # h1 accepts the first job and reserves epsilon 3 of its budget of 4 (the job itself waits for offline h4)
    deadline = time.time() + 60
    while not (reserved := [e for e in _events(c, "h1", "dp_budget") if e["job"] == job1]):
        assert time.time() < deadline, "h1 never accepted the first DP job"
        time.sleep(0.2)
    assert reserved[0]["details"]["total_epsilon"] == 3.0
    second = first.replace('name = "dp1"', 'name = "dp2"')
    job2 = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=second), timeout=10).job_id
    status = _wait(stub, job2)
    assert "h1" in status.declined
    decline = [e for e in _events(c, "h1", "job_declined") if e["job"] == job2][0]
    assert "would exceed the dataset's budget" in " ".join(decline["details"]["reasons"])
    assert not [e for e in _events(c, "h1", "dataset_used") if e["job"] == job2]
    stub.AbortJob(pb.AbortJobRequest(job_id=job1, reason="test done"), timeout=10)
