"""Validation at the edge (issue 11, items 5 and 10, and min_silos_per_aggregate from 11).

A hostile coordinator submits absurd or dangerous job specs; a hostile aggregator offers silos
path-like job ids and specs that do not validate; a stored spec that no longer validates must not
stop the aggregator from restarting. Every case runs against the real parts: the real aggregator
and node processes over mTLS gRPC on 127.0.0.1, the real SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time

import grpc
import pytest

from aggregator.config import load_aggregator_config
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto.keys import compute_fingerprint
from policies.schema import load_consortium_policy
from protocol import cipherfed_pb2 as pb
from protocol import cipherfed_pb2_grpc as pbg
from protocol.jobspec import parse_job_spec
from protocol.tomlconfig import ConfigError
from silo_node.models import build_torch_module
from tests.helpers import rpc_code, serve_as_aggregator

BAD = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
MARKER_MODULE = "cf_marker_factory"


def _spec(fingerprint: str, **kw) -> str:
    return job_toml(kw.pop("name", "hostile"), kw.pop("participants", ["silo-a", "silo-b"]), fingerprint, ["x"], **kw)


def _replace(old: str, new: str, **kw):
    def build(fp: str) -> str:
        text = _spec(fp, **kw)
        assert old in text, old
        return text.replace(old, new)

    return build


# (case, spec builder, expected status code, text the refusal must contain: the field and the reason)
HOSTILE_SPECS = [
    ("lr inf", _replace("lr = 0.1", "lr = inf"), BAD, "lr: Input should be a finite number"),
    ("lr nan", _replace("lr = 0.1", "lr = nan"), BAD, "lr: Input should be a finite number"),
    ("lr huge", _replace("lr = 0.1", "lr = 1e300"), BAD, "lr: Input should be less than or equal to 100"),
    (
        "epsilon inf",
        lambda fp: _spec(fp, scaling="local", extra="[dp]\nepsilon = inf\n"),
        BAD,
        "dp.epsilon: Input should be a finite number",
    ),
    (
        "delta nan",
        lambda fp: _spec(fp, scaling="local", extra="[dp]\nepsilon = 1.0\ndelta = nan\n"),
        BAD,
        "dp.delta: Input should be a finite number",
    ),
    ("timeout 1e300", lambda fp: _spec(fp, round_timeout_s=1e300), BAD, "round_timeout_s: Input should be less"),
    ("timeout inf", _replace("round_timeout_s = 60.0", "round_timeout_s = inf"), BAD, "round_timeout_s: Input should"),
    ("clip norm inf", lambda fp: _spec(fp, extra="update_clip_norm = inf\n"), BAD, "update_clip_norm: Input should"),
    ("batch 10^12", lambda fp: _spec(fp, batch_size=10**12), BAD, "batch_size: Input should be less"),
    ("seed negative", _replace("seed = 7", "seed = -1"), BAD, "seed: Input should be greater"),
    ("hidden 2e9", lambda fp: _spec(fp, model='type = "mlp"\nhidden = [2000000000]'), BAD, "model.hidden.0: Input"),
    (
        "hidden too many parameters",
        lambda fp: _spec(fp, model='type = "mlp"\nhidden = [60000, 60000]'),
        BAD,
        "parameters for 1 features exceeds the limit",
    ),
    ("hidden 100 layers", lambda fp: _spec(fp, model=f'type = "mlp"\nhidden = {[4] * 100}'), BAD, "model.hidden:"),
    ("classes 10^9", lambda fp: _spec(fp, model='type = "logreg"\nnum_classes = 1000000000'), BAD, "num_classes"),
    ("participant path", lambda fp: _spec(fp, participants=["../../x", "silo-b"]), BAD, "participants.0: Value error"),
    ("participant slash", lambda fp: _spec(fp, participants=["silo-a", "a/b"]), BAD, "is not a safe identifier"),
    ("300 participants", lambda fp: _spec(fp, participants=[f"s{i}" for i in range(300)]), BAD, "participants:"),
    ("feature path", _replace('features = ["x"]', 'features = ["../etc/passwd"]'), BAD, "dataset.features.0:"),
    ("label with space", _replace('label = "label"', 'label = "a b"'), BAD, "dataset.label:"),
    ("fingerprint path", _replace("key_fingerprint = ", 'key_fingerprint = "../k"\n#'), BAD, "key_fingerprint:"),
    (
        "factory not a reference",
        lambda fp: _spec(fp, model='type = "factory"\nfactory = "os.system(1):x"'),
        BAD,
        "model.factory: Value error, factory",
    ),
    (
        "factory os:system",
        lambda fp: _spec(fp, model='type = "factory"\nfactory = "os:system"'),
        DENIED,
        "model.factory: 'os:system' is not in this aggregator's allowed_factories",
    ),
    ("profile none", lambda fp: _spec(fp, he_profile="none"), DENIED, "he_profile: 'none' sends plaintext updates"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "build", "code", "needle"), HOSTILE_SPECS, ids=[c[0] for c in HOSTILE_SPECS])
def test_hostile_job_specs_are_refused_at_submit_with_the_field(running_aggregator, case, build, code, needle):
    c = running_aggregator
    stub = c.stub("coordinator")
    got, message = rpc_code(lambda: stub.SubmitJob(pb.SubmitJobRequest(spec_toml=build(c.fingerprint)), timeout=30))
    assert (got, needle in message) == (code, True), message
    assert "Traceback" not in message
    assert not [j for j in stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs if j.name == "hostile"]


def test_key_fingerprint_length_matches_the_crypto_layer():
    from protocol.jobspec import KEY_FINGERPRINT_HEX_CHARS

    assert len(compute_fingerprint("sum", b"params", b"id", b"\x00" * 32)) == KEY_FINGERPRINT_HEX_CHARS


def test_min_silos_per_aggregate_below_two_does_not_load(tmp_path):
    agg = tmp_path / "aggregator.toml"
    agg.write_text(
        'consortium = "C"\nstate_dir = "s"\nmin_silos_per_aggregate = 1\n[tls]\ncert = "a"\nkey = "b"\nca = "c"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_aggregator_config(agg)
    assert err.value.problems == [("min_silos_per_aggregate", "Input should be greater than or equal to 2")]
    policy = tmp_path / "consortium.toml"
    policy.write_text(
        'kind = "consortium"\nconsortium = "C"\nmin_silos_per_aggregate = 1\n'
        f'[[members]]\nname = "a"\nrole = "silo"\ncert_fingerprint = "{"a" * 64}"\n'
    )
    with pytest.raises(ConfigError, match="min_silos_per_aggregate: Input should be greater than or equal to 2"):
        load_consortium_policy(policy)


def test_factory_import_needs_the_allow_list_at_the_point_of_import(tmp_path, monkeypatch):
    """Even a caller that skipped the accept-time check cannot import a factory the site did not list."""
    from silo_node.models import FactoryNotAllowed

    marker = tmp_path / "imported"
    (tmp_path / f"{MARKER_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef build(**kw): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = parse_job_spec(_spec("f" * 32, model=f'type = "factory"\nfactory = "{MARKER_MODULE}:build"'))
    for allowed in ((), ("other:build",), (f"{MARKER_MODULE}:other",)):
        with pytest.raises(FactoryNotAllowed, match="not in this site's allowed_factories"):
            build_torch_module(spec, 1, allowed)
    assert not marker.exists() and MARKER_MODULE not in sys.modules


def test_site_policy_names_each_factory_it_runs():
    from policies.evaluate import evaluate_site, evaluate_without_site_policy
    from policies.schema import SitePolicy

    job = parse_job_spec(_spec("f" * 32, model='type = "factory"\nfactory = "os:system"'))
    base = {"kind": "site", "site": "silo-a", "trusted_aggregators": ["a" * 64], "allowed_models": ["factory"]}
    refused = evaluate_site(SitePolicy.model_validate(base), job, aggregator_fingerprint=None, consortium="C")
    assert not refused.allowed and "factory 'os:system' is not in this site's allowed_factories" in refused.reasons[0]
    listed = SitePolicy.model_validate({**base, "allowed_factories": ["os:system"]})
    assert evaluate_site(listed, job, aggregator_fingerprint=None, consortium="C").allowed
    assert not evaluate_without_site_policy(job).allowed
    with pytest.raises(ValueError, match="must be 'package.module:function'"):
        SitePolicy.model_validate({**base, "allowed_factories": ["../evil.py:x"]})


# ---------------------------------------------------------------------- nodes without a site policy


def _audit(path, event):
    """The records of one event in a node's log; none yet while a slow node has not opened its log."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if json.loads(line)["event"] == event]


def _wait_status(stub, job, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = stub.GetJobStatus(pb.JobRef(job_id=job), timeout=10)
        if status.status != "running":
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job} still running")


@pytest.mark.slow
def test_node_without_site_policy_declines_factory_and_plaintext_jobs_before_importing(tmp_path):
    names = ["n1", "n2"]
    c = LocalConsortium(tmp_path / "c", names)
    c.provision()
    for name in names:
        c.nodes[name].data.write_text("x,label\n" + "".join(f"{i / 10},{i % 2}\n" for i in range(20)))
    marker = c.workdir / "factory-was-imported"
    # The nodes run with the work directory as cwd, so this module is importable by them.
    (c.workdir / f"{MARKER_MODULE}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\ndef build(n_features, num_classes):\n"
        "    return torch.nn.Linear(n_features, 1)\n"
    )
    # The aggregator is told to let both through, so that only the nodes' defence is tested.
    stub = c.start_all(aggregator_extra=f'allow_plaintext_jobs = true\nallowed_factories = ["{MARKER_MODULE}:build"]')
    try:
        factory = _spec(
            c.fingerprint, name="fac", participants=names, model=f'type = "factory"\nfactory = "{MARKER_MODULE}:build"'
        )
        plain = _spec(c.fingerprint, name="plain", participants=names, he_profile="none")
        jobs = [stub.SubmitJob(pb.SubmitJobRequest(spec_toml=s), timeout=30).job_id for s in (factory, plain)]
        statuses = [_wait_status(stub, job) for job in jobs]
        assert all(s.status == "failed" for s in statuses), statuses
        assert "this node has no site policy, so it imports no job-supplied code" in statuses[0].reason
        assert "he_profile 'none' sends plaintext updates; this node has no site policy" in statuses[1].reason
        assert not marker.exists()  # nothing was imported, by either node
        for name in names:  # the job fails at the first decline; wait for the other node's too
            log = c.nodes[name].dir / "state" / "audit.jsonl"
            deadline = time.time() + 90
            while not set(jobs) <= {e["job"] for e in _audit(log, "job_declined")} and time.time() < deadline:
                time.sleep(0.3)
            assert set(jobs) <= {e["job"] for e in _audit(log, "job_declined")}
            assert not [e for e in _audit(log, "dataset_used") if e["job"] in jobs]  # no data read
            decisions = [e for e in _audit(log, "policy_decision") if e["job"] in jobs]
            assert len(decisions) == 2 and not any(e["details"]["allowed"] for e in decisions)
            assert c.processes[name].poll() is None
    finally:
        c.stop_all()


# ---------------------------------------------------------------------- a hostile aggregator


class HostileAggregator(pbg.ConsortiumServicer):
    """What a malicious aggregator can send a silo: any job id and any spec text in its tasks.

    A real gRPC server with the consortium's real aggregator certificate (the node checks it with
    mTLS as usual); only the content of its answers is hostile.
    """

    def __init__(self, tasks: list[pb.Task]) -> None:
        self.tasks = tasks
        self.polls = 0
        self.declines: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def Poll(self, request, context):
        with self.lock:
            self.polls += 1
        time.sleep(0.1)
        return pb.PollReply(tasks=self.tasks, server_time_unix_ms=int(time.time() * 1000), version=1)

    def Decline(self, request, context):
        with self.lock:
            self.declines[request.job_id] = list(request.reasons)
        return pb.Ack(message="declined")


@pytest.mark.slow
def test_node_declines_hostile_job_ids_and_specs_and_keeps_polling(tmp_path):
    c = LocalConsortium(tmp_path / "c", ["p1", "p2"])
    c.provision(he_keys=False)
    node = c.nodes["p1"]
    node.data.write_text("pid,x1,label\n" + "".join(f"id{i},{i / 10},{i % 2}\n" for i in range(30)))
    vertical = parse_job_spec(
        'name = "v"\npartition = "vertical"\nrounds = 1\nhe_profile = "vertical"\nparticipants = ["p1", "p2"]\n'
        '[dataset]\nlabel = "label"\nid = "pid"\n[vertical]\nactive = "p1"\npassive = ["p2"]\n'
        '[vertical.features]\np1 = ["x1"]\np2 = ["x2"]\n'
    ).model_dump_json()
    inf_lr = json.loads(vertical)
    inf_lr["lr"] = None  # what an inf stored as JSON becomes
    escaped = "../../escaped"
    tasks = [
        pb.Task(job_id=escaped, spec_json=vertical, job_status="running"),
        pb.Task(job_id="bad-spec", spec_json=json.dumps(inf_lr), job_status="running"),
        pb.Task(job_id="not-json", spec_json="{not json", job_status="running"),
        pb.Task(job_id="lr-infinity", spec_json=vertical.replace('"lr":0.1', '"lr":Infinity'), job_status="running"),
    ]
    hostile = HostileAggregator(tasks)
    server = serve_as_aggregator(c, hostile, 8)
    try:
        c.write_node_config("p1", keys='scope = "consortium"')
        proc = c.start_node("p1")
        deadline = time.time() + 60
        while len(hostile.declines) < len(tasks) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        polls_after_declines = hostile.polls
        time.sleep(1.5)
        assert proc.poll() is None, (c.logs / "p1.log").read_text()[-3000:]
        assert hostile.polls > polls_after_declines  # the run loop survived every task and keeps polling
        assert set(hostile.declines) == {t.job_id for t in tasks}
        assert "job id '../../escaped' is not a safe identifier" in hostile.declines[escaped][0]
        assert "lr: Input should be a valid number" in hostile.declines["bad-spec"][0]
        assert "(json): not valid JSON" in hostile.declines["not-json"][0]
        assert "lr: Input should be a finite number" in hostile.declines["lr-infinity"][0]
        assert not (node.dir / "state" / "jobs" / escaped).exists() and not (node.dir / "escaped").exists()
        log = node.dir / "state" / "audit.jsonl"
        declined = _audit(log, "job_declined")
        assert len(declined) == len(tasks)
        assert not _audit(log, "dataset_used")  # no data was read for any of them
    finally:
        c.stop_all()
        server.stop(0)


# ---------------------------------------------------------------------- a poisoned stored job


@pytest.mark.slow
def test_aggregator_restarts_past_a_poisoned_stored_job(tmp_path):
    c = LocalConsortium(tmp_path / "c", ["silo-a", "silo-b"])
    c.provision()
    c.write_aggregator_config()
    c.start_aggregator()
    c.write_admin_config()
    stub = c.stub("coordinator")
    good = stub.SubmitJob(
        pb.SubmitJobRequest(spec_toml=_spec(c.fingerprint, name="good", round_timeout_s=600)), timeout=30
    ).job_id
    c.kill("aggregator", 15)
    db = sqlite3.connect(c.agg_dir / "state" / "aggregator.sqlite")
    (row,) = db.execute("SELECT * FROM jobs WHERE job_id = ?", (good,)).fetchall()
    spec = json.loads(row[2])
    spec["lr"] = None  # how `lr = inf` was stored before specs were bounded
    for job_id, spec_json in (("poisoned-lr", json.dumps(spec)), ("poisoned-json", "{not json")):
        db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)", (job_id, "poisoned", spec_json, *row[3:]))
    db.commit()
    db.close()
    c.write_aggregator_config(c.port)
    c.start_aggregator()  # raises if the process exits
    stub = c.stub("coordinator")
    listed = {j.job_id: j.status for j in stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}
    assert listed == {good: "running", "poisoned-lr": "failed", "poisoned-json": "failed"}
    assert stub.GetJobStatus(pb.JobRef(job_id=good), timeout=10).rounds[-1].status == "open"
    code, message = rpc_code(lambda: stub.GetJobStatus(pb.JobRef(job_id="poisoned-lr"), timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "lr: Input should be a valid number" in message
    tasks = c.stub("silo-a").Poll(pb.PollRequest(wait_ms=0), timeout=10).tasks
    assert [t.job_id for t in tasks] == [good]  # the poisoned jobs are offered to no one
    audit = c.agg_dir / "state" / "audit.jsonl"
    failed = {e["job"]: e["details"]["reason"] for e in _audit(audit, "job_failed")}
    assert "stored job spec is not valid, job failed at restart" in failed["poisoned-lr"]
    assert "lr: Input should be a valid number" in failed["poisoned-lr"]
    assert "not valid JSON" in failed["poisoned-json"]
    c.stop_all()
