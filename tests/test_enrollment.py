"""Installing nodes as hospital IT would: every step through the `cipherfed` command, real processes."""

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crypto import pki
from crypto.errors import UnwrapError
from crypto.wrapping import unwrap_key
from protocol import cipherfed_pb2 as pb
from tests.helpers import breast_cancer_parts, stub_for

pytestmark = pytest.mark.slow
CONSORTIUM = "Test Consortium"


def cf(*args, cwd=None, check=True, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "cipherfed", *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cipherfed {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def spawn(args, log):
    return subprocess.Popen(
        [sys.executable, "-m", "cipherfed", *map(str, args)], stdout=open(log, "ab"), stderr=subprocess.STDOUT
    )


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    ca, agg, admin = root / "ca", root / "aggregator", root / "admin"
    procs = []
    # --- consortium admin: CA, aggregator and coordinator certificates
    cf("ca", "init", ca, "--consortium", CONSORTIUM)
    cf("ca", "issue", ca, "aggregator", "--role", "aggregator", "--dns", "localhost", "--ip", "127.0.0.1", "--out", agg)
    cf("ca", "issue", ca, "coordinator", "--role", "admin", "--out", admin)
    port = free_port()
    (agg / "aggregator.toml").write_text(
        f'consortium = "{CONSORTIUM}"\nlisten = "127.0.0.1:{port}"\nstate_dir = "state"\n'
        f'[tls]\ncert = "aggregator.crt"\nkey = "aggregator.key"\nca = "{ca / "ca.crt"}"\ncrl = "{ca / "crl.pem"}"\n'
    )
    procs.append(spawn(["aggregator", "start", "--config", agg / "aggregator.toml"], root / "aggregator.log"))
    for _ in range(200):
        if cf("aggregator", "health", "--config", agg / "aggregator.toml", check=False).returncode == 0:
            break
        time.sleep(0.1)
    (admin / "admin.toml").write_text(
        f'aggregator = "127.0.0.1:{port}"\nserver_name = "localhost"\n[tls]\n'
        f'ca = "{ca / "ca.crt"}"\ncert = "coordinator.crt"\nkey = "coordinator.key"\n'
    )
    # --- each hospital's IT: init, send CSR, receive certificate, fill in data
    data, parts = breast_cancer_parts(3)
    nodes = {}
    for i, rows in enumerate(parts, start=1):
        name, d = f"h{i}", root / f"h{i}"
        out = cf(
            "node", "init", "--name", name, "--aggregator", f"127.0.0.1:{port}", "--dir", d, "--consortium", CONSORTIUM
        ).stdout
        assert "0600" in out and "cipherfed ca sign" in out
        assert oct(os.stat(d / f"{name}.key").st_mode & 0o777) == "0o600"
        cert_path = cf("ca", "sign", ca, d / f"{name}.csr", "--role", "silo").stdout.splitlines()[0]
        assert Path(cert_path) == d / f"{name}.crt"
        shutil.copy(ca / "ca.crt", d / "ca.crt")
        with open(d / "data.csv", "w") as f:
            f.write(",".join([*data.columns, "label"]) + "\n")
            for x, y in zip(data.x_train[rows], data.y_train[rows]):
                f.write(",".join(map(repr, x.tolist())) + f",{y}\n")
        text = (d / "node.toml").read_text()
        text = text.replace('# label = "outcome"', 'label = "label"')
        (d / "node.toml").write_text(text)
        nodes[name] = d
    yield {
        "root": root,
        "ca": ca,
        "agg": agg,
        "admin": admin,
        "port": port,
        "nodes": nodes,
        "data": data,
        "procs": procs,
    }
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=20)


def test_enrollment_keys_and_a_first_job_end_to_end(installed):
    nodes, data = installed["nodes"], installed["data"]
    # doctor passes before any HE key exists (a warning says what the custodian must do)
    out = cf("node", "doctor", "--config", nodes["h2"] / "node.toml")
    assert "this node is ready" in out.stdout and "keys create" in out.stdout
    # the custodian creates the consortium key; others get copies wrapped to their certificates
    out = cf(
        "keys",
        "create",
        "--config",
        nodes["h1"] / "node.toml",
        "--member-cert",
        nodes["h2"] / "h2.crt",
        "--member-cert",
        nodes["h3"] / "h3.crt",
    ).stdout
    fingerprint = re.search(r'key_fingerprint = "([0-9a-f]+)"', out).group(1)
    secret = next((nodes["h1"] / "state" / "keys").glob("*.key"))
    assert oct(os.stat(secret).st_mode & 0o777) == "0o600"
    # the aggregator holds only the public context and opaque blobs
    db = installed["agg"] / "state" / "aggregator.sqlite"
    assert secret.read_bytes()[-64:] not in db.read_bytes()
    for name in ("h1", "h2", "h3"):
        doctor = json.loads(cf("node", "doctor", "--config", nodes[name] / "node.toml", "--json").stdout)
        he_key = next(c for c in doctor["checks"] if c["name"] == "HE key")
        expected = "holds HE key" if name == "h1" else "fetched wrapped to this node on first use"
        assert doctor["ready"] and he_key["status"] == "ok" and expected in he_key["detail"], he_key
        installed["procs"].append(
            spawn(["node", "start", "--config", nodes[name] / "node.toml"], installed["root"] / f"{name}.log")
        )
    job = installed["root"] / "job.toml"
    cols = ", ".join(f'"{c}"' for c in data.columns)
    job.write_text(
        f'name = "first"\nrounds = 3\nmin_silos = 3\nround_timeout_s = 60\nhe_profile = "sum"\n'
        f'key_fingerprint = "{fingerprint}"\nparticipants = ["h1", "h2", "h3"]\n[model]\ntype = "logreg"\n'
        f'[dataset]\nfeatures = [{cols}]\nlabel = "label"\n'
    )
    assert "valid" in cf("job", "validate", job).stdout
    job_id = cf("job", "submit", job, "--config", installed["admin"] / "admin.toml").stdout.strip()
    for _ in range(300):
        status = json.loads(cf("job", "status", job_id, "--config", installed["admin"] / "admin.toml", "--json").stdout)
        if status["status"] != "running":
            break
        time.sleep(0.3)
    assert status["status"] == "completed", status
    listing = cf("job", "list", "--config", installed["admin"] / "admin.toml").stdout
    assert job_id in listing and "completed" in listing
    # h2 and h3 fetched their wrapped copies through the aggregator and unwrapped them
    for name in ("h2", "h3"):
        log = (nodes[name] / "state" / "audit.jsonl").read_text()
        assert '"event":"key_unwrapped"' in log and fingerprint in log
    assert cf("node", "health", "--config", nodes["h2"] / "node.toml").returncode == 0


def test_a_wrapped_key_for_one_node_cannot_be_opened_by_another(installed):
    nodes = installed["nodes"]
    ca = installed["ca"] / "ca.crt"
    h2 = stub_for(ca, nodes["h2"] / "h2.crt", nodes["h2"] / "h2.key", installed["port"])
    reply = h2.GetKeyMaterial(pb.KeyMaterialRequest(scope="consortium"), timeout=10)
    assert reply.wrapped_for_me  # h2 gets its own blob, and only its own (identity from its certificate)
    with pytest.raises(UnwrapError):
        unwrap_key(
            reply.wrapped_for_me,
            pki.load_private_key(nodes["h3"] / "h3.key"),
            pki.load_certificate(nodes["h3"] / "h3.crt"),
            consortium=CONSORTIUM,
            job="consortium",
            recipient="h3",
        )
    with pytest.raises(UnwrapError):  # nor with h3's key while claiming to be h2
        unwrap_key(
            reply.wrapped_for_me,
            pki.load_private_key(nodes["h3"] / "h3.key"),
            pki.load_certificate(nodes["h2"] / "h2.crt"),
            consortium=CONSORTIUM,
            job="consortium",
            recipient="h2",
        )


def _doctor_fails(config, needle):
    out = cf("node", "doctor", "--config", config, check=False)
    assert out.returncode == 1, out.stdout
    assert needle in out.stdout, out.stdout
    return out.stdout


def test_doctor_reports_each_failure_kind(installed, tmp_path):
    nodes, ca = installed["nodes"], installed["ca"]
    base = nodes["h3"]

    def variant(label, edit=None, files=None):
        d = tmp_path / label
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("state"))
        for name, content in (files or {}).items():
            (d / name).write_bytes(content)
        if edit:
            (d / "node.toml").write_text(edit((d / "node.toml").read_text()))
        return d / "node.toml"

    # expired certificate (issued for this node's name, valid 1 day, 5 days ago)
    old_cert, old_key = pki.issue(
        ca, "h3", "silo", tmp_path / "old", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    )
    _doctor_fails(
        variant("expired", files={"h3.crt": old_cert.read_bytes(), "h3.key": old_key.read_bytes()}),
        "certificate expiry",
    )
    # a certificate from another CA
    pki.init_ca(tmp_path / "other-ca", "Other")
    other_cert, other_key = pki.issue(tmp_path / "other-ca", "h3", "silo", tmp_path / "other")
    _doctor_fails(
        variant("wrongca", files={"h3.crt": other_cert.read_bytes(), "h3.key": other_key.read_bytes()}),
        "certificate chain",
    )
    # unreachable aggregator
    _doctor_fails(
        variant("unreachable", edit=lambda t: t.replace(f"127.0.0.1:{installed['port']}", "127.0.0.1:1")), "UNAVAILABLE"
    )
    # a declared column missing from the data file
    _doctor_fails(variant("column", edit=lambda t: t.replace('label = "label"', 'label = "outcome"')), "outcome")
    # a private key readable by others
    loose = variant("perms")
    os.chmod(loose.parent / "h3.key", 0o644)
    out = _doctor_fails(loose, "chmod 600")
    assert "0o644" in out
    # and the healthy node passes
    assert cf("node", "doctor", "--config", base / "node.toml").returncode == 0


def test_revocation_takes_effect_for_a_running_consortium(installed, tmp_path):
    ca, port = installed["ca"], installed["port"]
    cert, key = pki.issue(ca, "h9", "silo", tmp_path)
    stub = stub_for(ca / "ca.crt", cert, key, port)
    assert stub.ServerInfo(pb.ServerInfoRequest(), timeout=5).caller == "h9"
    serial = f"{pki.load_certificate(cert).serial_number:x}"
    cf("ca", "revoke", ca, serial)
    import grpc

    with pytest.raises(grpc.RpcError) as err:
        stub.ServerInfo(pb.ServerInfoRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in err.value.details()
    agg_log = (installed["agg"] / "state" / "audit.jsonl").read_text()
    assert '"event":"rpc_refused"' in agg_log and "revoked" in agg_log


def _job_file(installed, name, fingerprint, rounds=2):
    cols = ", ".join(f'"{c}"' for c in installed["data"].columns)
    path = installed["root"] / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nrounds = {rounds}\nmin_silos = 3\nround_timeout_s = 60\nhe_profile = "sum"\n'
        f'key_fingerprint = "{fingerprint}"\nparticipants = ["h1", "h2", "h3"]\n[model]\ntype = "logreg"\n'
        f'[dataset]\nfeatures = [{cols}]\nlabel = "label"\n'
    )
    return path


def _wait_status(installed, job_id, timeout=120):
    for _ in range(int(timeout / 0.3)):
        status = json.loads(cf("job", "status", job_id, "--config", installed["admin"] / "admin.toml", "--json").stdout)
        if status["status"] != "running":
            return status
        time.sleep(0.3)
    raise AssertionError(status)


def test_a_rotated_per_job_key_is_fetched_by_fingerprint(installed):
    nodes = installed["nodes"]
    out = cf(
        "keys",
        "create",
        "--config",
        nodes["h1"] / "node.toml",
        "--scope",
        "rotated-q4",
        "--member-cert",
        nodes["h2"] / "h2.crt",
        "--member-cert",
        nodes["h3"] / "h3.crt",
    ).stdout
    fingerprint = re.search(r'key_fingerprint = "([0-9a-f]+)"', out).group(1)
    job_id = cf(
        "job", "submit", _job_file(installed, "rotated", fingerprint), "--config", installed["admin"] / "admin.toml"
    ).stdout.strip()
    assert _wait_status(installed, job_id)["status"] == "completed"
    log = (nodes["h3"] / "state" / "audit.jsonl").read_text()
    unwraps = [json.loads(line) for line in log.splitlines() if '"event":"key_unwrapped"' in line]
    assert {u["details"]["scope"] for u in unwraps} >= {"consortium", "rotated-q4"}


def test_the_coordinator_can_abort_a_running_job(installed):
    spec = _job_file(installed, "long", _current_key(installed), rounds=500)
    job_id = cf("job", "submit", spec, "--config", installed["admin"] / "admin.toml").stdout.strip()
    out = cf("job", "abort", job_id, "--config", installed["admin"] / "admin.toml", "--reason", "wrong cohort")
    assert "aborted" in out.stdout
    status = _wait_status(installed, job_id)
    assert status["status"] == "aborted" and "aborted by coordinator: wrong cohort" in status["reason"]
    again = cf("job", "abort", job_id, "--config", installed["admin"] / "admin.toml", check=False)
    assert again.returncode == 1 and "already aborted" in again.stdout


def _current_key(installed):
    return next((installed["nodes"]["h1"] / "state" / "keys").glob("*.key")).stem
