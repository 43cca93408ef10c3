"""Regression tests for the frictions a new operator hit following README and docs/ (issue 15, items 1-6).

Each test reproduces one friction as the operator met it (real `cipherfed` commands, real processes,
real mTLS) and fails on the code before its fix.
"""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from audit.log import AuditLog
from audit.report import build_report
from cipherfed import __version__
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from protocol.tomlconfig import ConfigError
from tests.helpers import breast_cancer_parts, rpc_code

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POLICY = ROOT / "deploy" / "examples" / "consortium-policy.toml"


def cf(*args, cwd=None, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "cipherfed", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def fingerprint(path):
    return pki.certificate_fingerprint(pki.load_certificate(path))


def policy_text(members):
    return (
        'kind = "consortium"\nconsortium = "Demo Health Consortium"\nmin_silos_per_aggregate = 3\n'
        'allowed_he_profiles = ["sum", "none"]\n'
        + "".join(f'[[members]]\nname = "{n}"\nrole = "{r}"\ncert_fingerprint = "{fp}"\n' for n, r, fp in members)
    )


def wait_status(stub, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=10)
        if status.status != "running":
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running")


def events(path, event, job=None):
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == event and (job is None or r.get("job") == job)]


# --------------------------------------------------------------------------- a consortium that finished a job


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Aggregator with a consortium policy, 3 nodes, and one completed HE job."""
    names = ["hospital-1", "hospital-2", "hospital-3"]
    c = LocalConsortium(tmp_path_factory.mktemp("frictions"), names)
    c.provision()
    data, parts = breast_cancer_parts(3)
    for name, rows in zip(names, parts, strict=True):
        c.write_data(name, data.x_train[rows], data.y_train[rows], data.columns)
    members = [("coordinator", "admin", fingerprint(c.admin_dir / "coordinator.crt"))]
    members += [(n, "silo", fingerprint(c.nodes[n].cert)) for n in names]
    policy = c.agg_dir / "consortium-policy.toml"
    policy.write_text(policy_text(members))
    c.start_all(aggregator_extra='consortium_policy = "consortium-policy.toml"')
    spec = job_toml("first", names, c.fingerprint, data.columns, rounds=2, min_silos=3)
    job_path = c.workdir / "job.toml"
    job_path.write_text(spec)
    stub = c.stub("coordinator")
    job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10).job_id
    assert wait_status(stub, job_id).status == "completed"
    deadline = time.time() + 60  # the nodes apply the last aggregate and export the model
    while not all((c.nodes[n].dir / "state" / "jobs" / job_id / "final_model.npz").exists() for n in names):
        assert time.time() < deadline, "the nodes did not export the model"
        time.sleep(0.2)
    yield {"c": c, "job_id": job_id, "job_path": job_path, "policy": policy, "members": members, "data": data}
    c.stop_all()


def test_friction2_consortium_policy_is_reloaded_and_policy_check_agrees_with_the_aggregator(finished):
    c, policy, members = finished["c"], finished["policy"], finished["members"]
    spec = job_toml(
        "plain", ["hospital-1", "hospital-2", "hospital-3"], "", finished["data"].columns, he_profile="none"
    )
    job = c.workdir / "plain.toml"
    job.write_text(spec)
    coordinator_cert = c.admin_dir / "coordinator.crt"
    # the coordinator's certificate is reissued; the policy still pins a certificate the coordinator does not use
    other = fingerprint(c.admin_dir / "auditor.crt")
    policy.write_text(policy_text([("coordinator", "admin", other), *members[1:]]))
    code, message = rpc_code(lambda: c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10))
    # reloaded, no restart: the pin is enforced at once, on every RPC (the interceptor refuses before the submit rule)
    assert code.name == "PERMISSION_DENIED" and "not the certificate the consortium policy registers" in message
    # the dry run, as documented and without the certificate, refuses exactly as the aggregator did
    for extra in (["--submitter-cert", coordinator_cert], []):
        dry = cf("policy", "check", job, "--consortium", policy, *extra)
        assert dry.returncode == 1 and "would be refused" in dry.stdout, dry.stdout + dry.stderr
    # a placeholder pin is refused on reload: the policy in force stays, and the refusal is audited
    policy.write_text(policy_text([("coordinator", "admin", "1" * 64), *members[1:]]))
    code, _ = rpc_code(lambda: c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10))
    assert code.name == "PERMISSION_DENIED"
    agg_log = c.agg_dir / "state" / "audit.jsonl"
    refused = events(agg_log, "consortium_policy_refused")
    assert refused and "placeholder" in refused[-1]["details"]["message"]
    # the right pin: accepted at once, and the dry run says so too
    policy.write_text(policy_text(members))
    assert cf("policy", "check", job, "--consortium", policy, "--submitter-cert", coordinator_cert).returncode == 0
    reply = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10)
    assert reply.job_id  # accepted at once; the nodes (no plaintext opt-in) may decline and end it before cleanup
    try:
        c.stub("coordinator").AbortJob(pb.AbortJobRequest(job_id=reply.job_id, reason="test"), timeout=10)
    except grpc.RpcError as exc:  # already ended by the declines: only that is acceptable
        assert exc.code().name == "FAILED_PRECONDITION" and "already" in (exc.details() or ""), exc.details()
    assert events(agg_log, "consortium_policy_reloaded")


def test_friction5_a_restarted_node_does_not_take_a_finished_job_again(finished):
    c, job_id = finished["c"], finished["job_id"]
    log = c.nodes["hospital-2"].dir / "state" / "audit.jsonl"
    assert len(events(log, "dataset_used", job_id)) == 1
    c.kill("hospital-2", sig=15)
    c.start_node("hospital-2")
    deadline = time.time() + 60
    while len(events(log, "node_started")) < 2 or not (c.nodes["hospital-2"].dir / "state" / "heartbeat").exists():
        assert time.time() < deadline
        time.sleep(0.2)
    started = events(log, "node_started")[-1]["ts"]
    heartbeat = c.nodes["hospital-2"].dir / "state" / "heartbeat"
    restarted_at = time.time() - 1
    beats = []
    while len(set(beats)) < 2:  # the first poll after the restart returned its tasks, and they were handled
        assert time.time() < deadline, "the restarted node did not poll twice"
        beat = float(heartbeat.read_text().split()[0])
        if beat > restarted_at:
            beats.append(beat)
        time.sleep(0.2)
    assert [e for e in events(log, "job_offered", job_id) if e["ts"] > started] == []
    assert len(events(log, "dataset_used", job_id)) == 1  # its data use is listed once, not twice
    # and the compliance report lists it once
    logs = [c.agg_dir / "state" / "audit.jsonl"] + [c.nodes[n].dir / "state" / "audit.jsonl" for n in c.silos]
    html, _ = build_report(logs)
    section = html.split("4. Data used at each silo")[1].split("<h2>")[0]
    assert section.count(f"<td>hospital-2</td><td>{job_id}</td>") == 1


def test_friction6_the_node_says_where_the_trained_model_landed(finished):
    c, job_id = finished["c"], finished["job_id"]
    path = c.nodes["hospital-1"].dir / "state" / "jobs" / job_id / "final_model.npz"
    assert f"trained model written to {path}" in (c.logs / "hospital-1.log").read_text()
    assert "final_model.npz" in (ROOT / "docs" / "install-node.md").read_text()


def test_friction6_job_list_never_cuts_a_job_id(finished):
    c, job_id = finished["c"], finished["job_id"]
    out = cf("job", "list", "--config", c.admin_dir / "coordinator.toml", env={"COLUMNS": "50"})
    assert out.returncode == 0, out.stderr
    assert job_id in out.stdout, out.stdout


def test_friction6_rounds_are_worded_the_same_everywhere(finished, tmp_path):
    c, job_id, job = finished["c"], finished["job_id"], finished["job_path"]
    wording = "2 training rounds + 1 statistics round (3 in all)"
    assert wording in cf("job", "validate", job).stdout
    status = cf("job", "status", job_id, "--config", c.admin_dir / "coordinator.toml", "--json")
    assert f"{wording} completed" in json.loads(status.stdout)["reason"]
    site = tmp_path / "site.toml"
    agg_fp = fingerprint(c.agg_dir / "aggregator.crt")
    site.write_text(f'kind = "site"\nsite = "hospital-1"\ntrusted_aggregators = ["{agg_fp}"]\n')
    check = cf(
        "policy",
        "check",
        job,
        "--site",
        site,
        "--consortium",
        finished["policy"],
        "--submitter-cert",
        c.admin_dir / "coordinator.crt",
    )
    # the site's rule and the consortium's rule both say it (rich may wrap a long cell: compare without spacing)
    text = re.sub(r"[\s│]", "", check.stdout)
    assert text.count("2trainingrounds+1statisticsround") >= 2, check.stdout


def test_friction6_node_health_is_unhealthy_while_the_aggregator_is_down(finished):
    c = finished["c"]
    config = c.nodes["hospital-3"].config
    assert cf("node", "health", "--config", config).returncode == 0
    c.kill("aggregator", sig=15)
    log = c.nodes["hospital-3"].dir / "state" / "audit.jsonl"
    deadline = time.time() + 30
    while not events(log, "aggregator_unreachable"):  # its own log says the node's polls now fail
        assert time.time() < deadline, "the node never noticed the aggregator was gone"
        time.sleep(0.2)
    out = cf("node", "health", "--config", config)
    assert out.returncode == 1 and "unhealthy" in out.stdout and "last successful poll" in out.stdout, out.stdout


# --------------------------------------------------------------------------- friction 1: the health probe


def test_friction1_health_check_verifies_the_name_in_the_documented_aggregator_certificate(tmp_path):
    ca, agg = tmp_path / "ca", tmp_path / "aggregator"
    assert cf("ca", "init", ca, "--consortium", "C").returncode == 0
    issued = cf("ca", "issue", ca, "aggregator", "--role", "aggregator", "--dns", "aggregator.consortium.example")
    assert issued.returncode == 0, issued.stderr
    shutil.move(ca / "issued", agg)
    (agg / "aggregator.toml").write_text(
        'consortium = "C"\nlisten = "127.0.0.1:0"\nstate_dir = "state"\nport_file = "port"\n'
        f'[tls]\ncert = "aggregator.crt"\nkey = "aggregator.key"\nca = "{ca / "ca.crt"}"\n'
    )
    log = open(tmp_path / "aggregator.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "cipherfed", "aggregator", "start", "--config", str(agg / "aggregator.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 60
        while not (agg / "port").exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
        out = cf("aggregator", "health", "--config", agg / "aggregator.toml")
        assert out.returncode == 0 and "SERVING" in out.stdout, out.stdout + out.stderr
        wrong = cf("aggregator", "health", "--config", agg / "aggregator.toml", "--server-name", "localhost")
        assert wrong.returncode == 1 and "localhost" in wrong.stdout  # it does verify the name
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # the container and Helm probes run that same command, with no name forced
    for probe in (ROOT / "deploy" / "docker" / "Dockerfile", ROOT / "deploy" / "helm" / "cipherfed" / "templates"):
        files = [probe] if probe.is_file() else list(probe.glob("*.yaml"))
        for f in files:
            assert "localhost" not in "".join(line for line in f.read_text().splitlines() if "health" in line)


# --------------------------------------------------------------------------- friction 2: fingerprints


def test_friction2_ca_fingerprint_prints_what_the_policy_pins(tmp_path):
    pki.init_ca(tmp_path / "ca", "C")
    cert, _ = pki.issue(tmp_path / "ca", "coordinator", "admin", tmp_path)
    out = cf("ca", "fingerprint", cert)
    assert out.returncode == 0 and fingerprint(cert) in out.stdout and "coordinator" in out.stdout
    toml = cf("ca", "fingerprint", "--toml", cert).stdout
    assert f'cert_fingerprint = "{fingerprint(cert)}"' in toml and 'role = "admin"' in toml


def test_friction2_placeholder_fingerprints_are_refused(tmp_path):
    from policies.schema import PolicyFile, is_placeholder_fingerprint

    out = cf("policy", "validate", EXAMPLE_POLICY)
    assert out.returncode == 1 and "placeholder" in out.stdout and "cipherfed ca fingerprint" in out.stdout
    for fake in ("0" * 64, "a" * 64, "ab" * 32, "0123456789abcdef" * 4, "1111" * 16):
        assert is_placeholder_fingerprint(fake), fake
    pki.init_ca(tmp_path / "ca", "C")
    real, _ = pki.issue(tmp_path / "ca", "coordinator", "admin", tmp_path)
    assert not is_placeholder_fingerprint(fingerprint(real))
    with pytest.raises(ConfigError, match="placeholder"):  # what the aggregator loads at start
        PolicyFile(EXAMPLE_POLICY)


# --------------------------------------------------------------------------- friction 3: files that travel


def test_friction3_revocation_and_custody_say_where_each_file_comes_from(tmp_path):
    pki.init_ca(tmp_path / "ca", "C")
    cert, _ = pki.issue(tmp_path / "ca", "h9", "silo", tmp_path)
    out = cf("ca", "revoke", tmp_path / "ca", f"{pki.load_certificate(cert).serial_number:x}")
    assert out.returncode == 0 and "copy it to" in out.stdout and "[tls].crl" in out.stdout
    docs = (ROOT / "docs" / "run-consortium.md").read_text()
    table = docs.split("## Where every file comes from")[1].split("\n## ")[0]
    for needle in ("`crl.pem`", "`NODE.crt`", "key custodian", "`ca/ca.crt`", "`consortium-policy.toml`"):
        assert needle in table, needle
    assert "# copy coordinator:ca/crl.pem -> aggregator:crl.pem" in docs
    assert (
        "# copy coordinator:hospital-2.crt -> custodian:hospital-2.crt"
        in (ROOT / "docs" / "install-node.md").read_text()
    )


# --------------------------------------------------------------------------- friction 4: node doctor and state dir


@pytest.fixture
def enrolled(tmp_path):
    pki.init_ca(tmp_path / "ca", "C")
    node = tmp_path / "node"
    assert cf("node", "init", "--name", "h1", "--aggregator", "127.0.0.1:9", "--dir", node).returncode == 0
    pki.sign_csr(tmp_path / "ca", node / "h1.csr", "silo")
    shutil.copy(tmp_path / "ca" / "ca.crt", node / "ca.crt")
    return node


def _doctor(node):
    return {
        c["name"]: c
        for c in json.loads(cf("node", "doctor", "--config", node / "node.toml", "--json").stdout)["checks"]
    }


def test_friction4_doctor_lists_every_column_of_the_data_file(enrolled):
    columns = [f"laboratory_measurement_{i:02d}_mmol_per_litre" for i in range(40)]
    (enrolled / "data.csv").write_text(",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n")
    text = (enrolled / "node.toml").read_text().replace('# label = "outcome"', 'label = "outcome"')
    (enrolled / "node.toml").write_text(text)
    detail = _doctor(enrolled)["data columns"]
    assert detail["status"] == "fail" and "outcome" in detail["detail"]
    assert all(c in detail["fix"] for c in columns), detail["fix"]  # the last one too


def test_friction4_a_missing_certificate_is_reported_as_such_and_the_he_key_check_skipped(enrolled):
    (enrolled / "h1.crt").unlink()
    checks = _doctor(enrolled)
    assert checks["certificate"]["status"] == "fail" and "does not exist" in checks["certificate"]["detail"]
    assert checks["HE key"]["status"] == "skip" and "certificate" in checks["HE key"]["detail"]


def test_friction4_node_init_state_dir_matches_the_systemd_unit(tmp_path):
    from silo_node.enroll import default_state_dir

    unit = (ROOT / "deploy" / "systemd" / "cipherfed-node.service").read_text()
    writable = re.search(r"^ReadWritePaths=(.+)$", unit, re.M).group(1).split()
    assert default_state_dir(Path("/etc/cipherfed")) in writable  # node init in /etc writes where the unit may
    assert default_state_dir(tmp_path) == "state"
    out = cf("node", "init", "--name", "h1", "--aggregator", "a:1", "--dir", tmp_path / "n", "--state-dir", "/srv/cf")
    assert 'state_dir = "/srv/cf"' in (tmp_path / "n" / "node.toml").read_text() and "/srv/cf" in out.stdout


# --------------------------------------------------------------------------- friction 5: report and its rendering


def _png_size(path):
    width, height = struct.unpack(">II", Path(path).read_bytes()[16:24])
    return width, height


def test_friction5_render_report_says_what_to_install_without_chromium(tmp_path):
    bin_dir = tmp_path / "bin"  # a PATH with the shell tools but no browser
    bin_dir.mkdir()
    for tool in ("bash", "realpath", "mktemp", "rm", "sed", "grep", "cat", "dirname"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    report = tmp_path / "r.html"
    report.write_text("<html><body>x</body></html>")
    out = subprocess.run(
        [str(bin_dir / "bash"), str(ROOT / "scripts" / "render-report.sh"), str(report), str(tmp_path / "r.png")],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir)},
        timeout=60,
    )
    assert out.returncode == 127 and "apt-get install chromium" in out.stderr, out.stderr


def test_friction5_render_report_captures_the_whole_page(tmp_path):
    report = tmp_path / "tall.html"
    report.write_text("<html><body style='margin:0'><div style='height:4200px'>top</div>end</body></html>")
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "render-report.sh"), str(report), str(tmp_path / "tall.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert _png_size(tmp_path / "tall.png")[1] >= 4200  # not cut at a fixed window height


def _signed_log(tmp_path, name, role):
    if not (tmp_path / "ca").exists():
        pki.init_ca(tmp_path / "ca", "C")
    cert, key = pki.issue(tmp_path / "ca", name, role, tmp_path / name)
    return AuditLog(tmp_path / name / "audit.jsonl", pki.load_private_key(key), pki.load_certificate(cert), __version__)


def test_friction5_report_shows_each_silos_policy_once_columns_unfolded_and_key_custody(tmp_path):
    fp = "5f" * 16
    custodian = _signed_log(tmp_path, "hospital-1", "silo")
    member = _signed_log(tmp_path, "hospital-2", "silo")
    custodian.append("key_generated", "hospital-1", fingerprint=fp, scope="consortium")
    custodian.append("key_wrapped", "hospital-1", fingerprint=fp, recipients=["hospital-2"])
    member.append("key_unwrapped", "hospital-2", fingerprint=fp, scope="consortium")
    rules = [{"rule": f"rule {i}", "passed": True, "why": f"explanation {i}"} for i in range(11)]
    reasons = [f"rule {i}: explanation {i}" for i in range(11)]
    for log, name in ((custodian, "hospital-1"), (member, "hospital-2")):
        log.append("job_accepted", name, job="j-1", key_fingerprint=fp)
        columns = ["age", "bmi", "sbp", "readmitted_30d"]
        log.append("dataset_used", name, job="j-1", dataset="d", rows=10, columns=columns)
        for r in range(11):
            details = {"stage": f"round {r} upload", "allowed": True, "reasons": reasons, "rules": rules}
            log.append("policy_decision", name, job="j-1", round=r, **details)
        log.close()
    html, _ = build_report([tmp_path / "hospital-1" / "audit.jsonl", tmp_path / "hospital-2" / "audit.jsonl"])
    policy = html.split("Policy decisions")[1].split("<h2>")[0]
    assert policy.count("explanation 10") == 2  # each silo's eleven rules once, not once per round
    assert "10 more (round 1 upload ... round 10 upload)" in policy
    assert "<details" not in html and "age, bmi, sbp, readmitted_30d" in html  # visible in print
    custody = html.split("Key custody")[1].split("<h2>")[0]
    assert fp in custody and "<td>hospital-1</td>" in custody and "hospital-2" in custody and "j-1" in custody


# --------------------------------------------------------------------------- friction 6: messages


def test_friction6_wrong_directory_mistakes_name_the_file_and_what_to_do(tmp_path):
    out = cf("ca", "sign", "ca/", "hospital-1.csr", "--role", "silo", cwd=tmp_path)
    assert out.returncode == 1 and "[Errno" not in out.stderr
    assert "hospital-1.csr does not exist" in out.stderr and str(tmp_path) in out.stderr, out.stderr
    out = cf("job", "validate", "job.toml", cwd=tmp_path)
    assert out.returncode == 1 and "[Errno" not in out.stderr and "job.toml does not exist" in out.stderr


def test_friction6_a_missing_or_empty_audit_log_is_not_reported_as_tampering(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    missing = cf("audit", "verify", "aggregator/state/audit.jsonl", cwd=tmp_path)
    assert missing.returncode == 1 and "FAILED" not in missing.stdout and ":0" not in missing.stdout
    assert "NOT VERIFIED" in missing.stdout and "no such file" in missing.stdout, missing.stdout
    empty = cf("audit", "verify", "empty.jsonl", cwd=tmp_path)
    assert empty.returncode == 1 and "FAILED" not in empty.stdout and "empty" in empty.stdout, empty.stdout
