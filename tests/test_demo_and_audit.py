"""One real `cipherfed demo` run: its results, and the tamper evidence of its audit trail (on copies of its logs).

Kept in one module so the demo runs once per test session."""

import base64
import json
import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from audit.log import AuditLog
from audit.records import record_hash
from audit.verify import verify_logs
from crypto import pki
from tests.helpers import DEMO_JSON_KEYS

pytestmark = pytest.mark.slow


def test_demo_three_hospitals_end_to_end(demo_run):
    w, result, stdout = demo_run
    for key in DEMO_JSON_KEYS:
        assert key in result
    assert result["silos"] == 3 and result["partition"] == "horizontal"
    assert result["final"]["accuracy"] >= result["centralized"]["accuracy"] - 0.02
    assert result["all_silos_hold_the_same_model"]
    assert result["upload_bytes_total"] > 0
    assert result["wall_s"] < 120
    # the workdir is kept: certificates, configs, logs, SQLite, models
    assert (w / "aggregator" / "state" / "aggregator.sqlite").exists()
    assert (w / "hospital-1" / "node.toml").exists() and (w / "logs" / "aggregator.log").exists()
    # it ends with the audit verification and the report path
    assert result["audit"]["verified"] and "verified" in stdout and "compliance-report.html" in stdout
    # the aggregator never received a secret key: only the public context is in its directory
    from crypto.errors import KeyMaterialError
    from crypto.keys import load_public_context, load_secret_key_set

    contexts = list((w / "aggregator" / "keys").glob("*.ctx"))
    assert contexts
    for ctx in contexts:
        load_public_context(ctx.read_bytes())
        with pytest.raises(KeyMaterialError):
            load_secret_key_set(ctx.read_bytes())


def test_logs_and_state_hold_no_secrets(demo_run):
    """No HE secret key bytes and no silo private key in any log, audit record or aggregator file."""
    w, result, _ = demo_run
    he_secret = (w / "hospital-1" / "he_secret.key").read_bytes()[-64:]  # a slice of the serialized secret key
    silo_keys = [(w / f"hospital-{i}" / f"hospital-{i}.key").read_bytes()[40:80] for i in (1, 2, 3)]
    files = list((w / "logs").glob("*.log")) + list(w.glob("*/state/audit.jsonl"))
    files += [p for p in (w / "aggregator").rglob("*") if p.is_file() and p.name != "aggregator.key"]
    assert len(files) > 5
    for path in files:
        data = path.read_bytes()
        assert he_secret not in data, path
        assert b"PRIVATE KEY" not in data, path
        for key in silo_keys:
            assert key not in data, path


@pytest.fixture()
def logs(demo_run, tmp_path):
    w, _, _ = demo_run
    copies = {}
    for party, path in [("aggregator", w / "aggregator" / "state" / "audit.jsonl")] + [
        (f"hospital-{i}", w / f"hospital-{i}" / "state" / "audit.jsonl") for i in (1, 2, 3)
    ]:
        copies[party] = tmp_path / f"{party}.jsonl"
        shutil.copy(path, copies[party])
    return w, copies


def lines(path):
    return path.read_text().splitlines(keepends=True)


def write_record(path, content, i, record):
    """Put an edited record back at line i, encoded the way the log writes records."""
    content[i] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(content))


def first_problem(paths, ca=None):
    result = verify_logs(list(paths), ca)
    assert not result.ok
    return result.problems[0]


def index_of(path, event):
    return next(i for i, line in enumerate(lines(path)) if json.loads(line)["event"] == event)


def test_intact_multi_party_logs_verify(logs):
    w, copies = logs
    result = verify_logs(list(copies.values()), pki.load_certificate(w / "ca" / "ca.crt"))
    assert result.ok, result.summary()
    assert result.anchors_checked > 20
    parties = {log.party: log.role for log in result.logs}
    assert parties == {"aggregator": "aggregator", "hospital-1": "silo", "hospital-2": "silo", "hospital-3": "silo"}
    events = {r["event"] for log in result.logs for r in log.records}
    for needed in (
        "log_opened",
        "aggregator_started",
        "job_submitted",
        "round_opened",
        "upload_accepted",
        "aggregate_released",
        "job_completed",
        "node_started",
        "dataset_used",
        "job_accepted",
        "update_sent",
        "aggregate_decrypted",
        "model_exported",
        "key_generated",
        "key_wrapped",
        "key_unwrapped",
        "metrics_reported",
    ):
        assert needed in events, needed


def test_edited_field_is_detected(logs):
    _, copies = logs
    path = copies["hospital-2"]
    content = lines(path)
    i = index_of(path, "update_sent")
    record = json.loads(content[i])
    record["details"]["bytes"] = 1  # pretend less left the silo
    write_record(path, content, i, record)
    problem = first_problem([path])
    assert (problem.kind, problem.line) == ("hash mismatch", i + 1)


def test_deleted_record_is_detected(logs):
    _, copies = logs
    path = copies["hospital-3"]
    content = lines(path)
    del content[5]
    path.write_text("".join(content))
    problem = first_problem([path])
    assert (problem.kind, problem.line) == ("gap in sequence", 6)


def test_reordered_records_are_detected(logs):
    _, copies = logs
    path = copies["aggregator"]
    content = lines(path)
    content[10], content[11] = content[11], content[10]
    path.write_text("".join(content))
    problem = first_problem([path])
    assert problem.kind in ("records out of order", "gap in sequence") and problem.line == 11


def test_forged_signature_is_detected(logs):
    w, copies = logs
    path = copies["hospital-1"]
    content = lines(path)
    i = index_of(path, "update_sent")
    record = json.loads(content[i])
    record["details"]["encrypted"] = False
    record["hash"] = record_hash(record)  # the forger can rehash, but must sign with a key of their own
    other = pki.load_private_key(w / "hospital-3" / "hospital-3.key")
    record["sig"] = base64.b64encode(other.sign(bytes.fromhex(record["hash"]), ec.ECDSA(hashes.SHA256()))).decode()
    write_record(path, content, i, record)
    problem = first_problem([path])
    assert (problem.kind, problem.line) == ("bad signature", i + 1)


def test_truncated_tail_is_detected_against_the_other_party(logs):
    _, copies = logs
    silo = copies["hospital-2"]
    content = lines(silo)
    silo.write_text("".join(content[: len(content) // 2]))
    assert verify_logs([silo]).ok  # on its own a clean cut at a line boundary looks complete...
    problem = first_problem([copies["aggregator"], silo])  # ...but the aggregator anchored heads it no longer has
    assert problem.kind == "anchor mismatch" and "hospital-2" in problem.message


def test_truncated_aggregator_log_is_detected_from_silo_logs(logs):
    _, copies = logs
    agg = copies["aggregator"]
    content = lines(agg)
    agg.write_text("".join(content[: len(content) // 3]))
    problem = first_problem([agg, copies["hospital-1"]])
    assert problem.kind == "anchor mismatch" and "aggregator" in problem.message


def test_log_from_a_node_outside_the_consortium_ca_fails(logs, tmp_path):
    w, _ = logs
    pki.init_ca(tmp_path / "rogue-ca", "Rogue")
    cert, key = pki.issue(tmp_path / "rogue-ca", "hospital-2", "silo", tmp_path / "rogue")
    log = AuditLog(tmp_path / "rogue.jsonl", pki.load_private_key(key), pki.load_certificate(cert))
    log.append("update_sent", "hospital-2", bytes=10, encrypted=True)
    log.close()
    assert verify_logs([tmp_path / "rogue.jsonl"]).ok  # self-consistent...
    problem = first_problem([tmp_path / "rogue.jsonl"], pki.load_certificate(w / "ca" / "ca.crt"))
    assert problem.kind == "unknown signer"


def test_torn_last_line_is_kept_as_evidence_and_recovered(logs, tmp_path):
    w, copies = logs
    path = copies["hospital-3"]
    intact = path.read_bytes()
    torn = b'{"seq":999,"ts":"2026-11-20T00:00:00Z","event":"upd'
    path.write_bytes(intact + torn)  # the process died in the middle of a write
    assert first_problem([path]).kind == "malformed record"
    log = AuditLog(
        path,
        pki.load_private_key(w / "hospital-3" / "hospital-3.key"),
        pki.load_certificate(w / "hospital-3" / "hospital-3.crt"),
    )
    log.close()
    evidence = list(tmp_path.glob("hospital-3.jsonl.torn-*"))
    assert len(evidence) == 1 and evidence[0].read_bytes() == torn
    result = verify_logs([path])
    assert result.ok
    last = json.loads(lines(path)[-1])
    assert last["event"] == "log_recovered" and last["details"]["torn_bytes"] == len(torn)
    assert last["details"]["evidence_file"] == evidence[0].name


def test_cli_verify_exit_codes_and_messages(logs):
    w, copies = logs
    cli = [
        sys.executable,
        "-m",
        "cipherfed",
        "audit",
        "verify",
        *map(str, copies.values()),
        "--ca",
        str(w / "ca" / "ca.crt"),
    ]
    ok = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("verified ")
    path = copies["hospital-2"]
    content = lines(path)
    del content[3]
    path.write_text("".join(content))
    bad = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "FAILED: hospital-2.jsonl:4 (seq 4): gap in sequence" in bad.stdout


def test_cli_show_filters(logs):
    _, copies = logs
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cipherfed",
            "audit",
            "show",
            str(copies["aggregator"]),
            "--event",
            "job_submitted",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 2 and {r["details"]["he_profile"] for r in records} == {"sum", "none"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cipherfed",
            "audit",
            "show",
            str(copies["hospital-1"]),
            "--actor",
            "hospital-1",
            "--since",
            "2000-01-01T00:00Z",
            "--until",
            "2000-01-02T00:00Z",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip().splitlines() == ["ts,party,seq,actor,event,job,round,details"]


def test_report_for_a_real_run_has_every_section_and_fetches_nothing(demo_run):
    w, result, _ = demo_run
    html = (w / "compliance-report.html").read_text()
    for section in (
        "Integrity of the record",
        "verified",
        "Parties and logs",
        "Jobs: timeline",
        "Data used at each silo",
        "What left each silo",
        "Policy decisions",
        "Differential-privacy budget",
        "Training curves",
        "<svg",
        "hospital-1",
        "hospital-2",
        "hospital-3",
        "breast_cancer-he",
    ):
        assert section in html, section
    assert 'class="yes">yes' in html  # the HE job's uploads are shown as encrypted
    assert 'class="no">NO' in html  # the plaintext comparison run is shown as not encrypted
    for fetch in ("<script src", "<link", 'src="http', "url(http", "@import"):
        assert fetch not in html
