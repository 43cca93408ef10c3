"""Prometheus metrics and the ListMembers RPC of a real aggregator process (mTLS on 127.0.0.1)."""

import json
import re
import socket
import urllib.request
from pathlib import Path

import grpc
import pytest

from aggregator.config import AggregatorConfig
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from tests.helpers import HandSilo, rpc_code, stub_for, tiny_update

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    c = LocalConsortium(tmp_path_factory.mktemp("metrics"), ["silo-a", "silo-b", "silo-c", "silo-d"])
    c.provision()
    c.metrics_port = free_port()
    c.write_aggregator_config(extra=f'metrics_listen = "127.0.0.1:{c.metrics_port}"')
    c.start_aggregator()
    c.write_admin_config()
    yield c
    c.stop_all()


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_metrics_move_between_two_scrapes_of_a_real_job(metered):
    c = metered
    before = scrape(c.metrics_port)
    assert before["cipherfed_active_jobs"] == 0
    spec = job_toml("metered", ["silo-a", "silo-b", "silo-c"], c.fingerprint, ["x"], rounds=2, round_timeout_s=300)
    job = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    a, b, cc, d = (HandSilo(c, n) for n in ("silo-a", "silo-b", "silo-c", "silo-d"))
    a.stub.Poll(pb.PollRequest(), timeout=10)

    code, _ = rpc_code(lambda: d.send(*d.build(job, 0, tiny_update(9), 1.0)))  # not a participant
    assert code == grpc.StatusCode.PERMISSION_DENIED
    sent = 0
    for i, silo in enumerate((a, b, cc)):
        sent += silo.send(*silo.build(job, 0, tiny_update(i), 10.0 + i)).bytes
    _header, _manifest, chunks = a.download(job, 0)
    aggregate_bytes = sum(len(ch) for ch in chunks)

    after = scrape(c.metrics_port)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("cipherfed_rounds_opened_total") == 2  # round 0, then round 1 after the release
    assert delta('cipherfed_rounds_closed_total{outcome="released"}') == 1
    assert delta('cipherfed_round_duration_seconds_count{outcome="released"}') == 1
    assert delta("cipherfed_uploads_accepted_total") == 3
    assert delta('cipherfed_uploads_refused_total{reason="permission_denied"}') == 1
    assert delta("cipherfed_upload_bytes_total") == sent
    assert delta("cipherfed_aggregate_bytes_sent_total") >= aggregate_bytes > 0
    assert after["cipherfed_active_jobs"] == 1
    assert 0 <= after['cipherfed_member_seconds_since_last_poll{member="silo-a"}'] < 60
    assert delta('cipherfed_audit_records_total{event="upload_accepted"}') == 3
    assert delta('cipherfed_audit_records_total{event="job_submitted"}') == 1
    # label values are codes and names, never the free-text reasons the audit log keeps
    reasons = {m.group(1) for k in after for m in [re.search(r'reason="([^"]*)"', k)] if m}
    assert reasons <= {
        "permission_denied",
        "unauthenticated",
        "invalid_argument",
        "failed_precondition",
        "already_exists",
        "aborted",
        "cancelled",
        "not_found",
        "other",
    }

    c.stub("coordinator").AbortJob(pb.AbortJobRequest(job_id=job, reason="test over"), timeout=10)
    ended = scrape(c.metrics_port)
    assert ended["cipherfed_active_jobs"] == 0
    assert ended['cipherfed_rounds_closed_total{outcome="aborted"}'] == 1


def test_metrics_listener_is_off_by_default_and_its_address_is_validated(tmp_path):
    base = {"consortium": "c", "state_dir": tmp_path, "tls": {"cert": "a", "key": "b", "ca": "c"}}
    assert AggregatorConfig.model_validate(base).metrics_listen is None
    for bad in ("9464", "127.0.0.1:", "host:port", "a b:1"):
        with pytest.raises(ValueError, match="metrics_listen"):
            AggregatorConfig.model_validate({**base, "metrics_listen": bad})


def test_list_members_shows_certificates_seen_revocation_and_roles(metered, tmp_path):
    c = metered
    c.stub("silo-b").Poll(pb.PollRequest(), timeout=10)
    cert, key = pki.issue(c.ca_dir, "silo-gone", "silo", tmp_path)
    stub_for(c.ca_dir / "ca.crt", cert, key, c.port).Poll(pb.PollRequest(), timeout=10)
    pki.revoke(c.ca_dir, pki.load_certificate(cert).serial_number)

    members = {m.name: m for m in c.stub("auditor").ListMembers(pb.ListMembersRequest(), timeout=10).members}
    silo_b = members["silo-b"]
    assert silo_b.role == "silo" and silo_b.last_method == "Poll" and silo_b.last_poll_unix_ms > 0
    assert silo_b.fingerprint == pki.certificate_fingerprint(pki.load_certificate(c.nodes["silo-b"].cert))
    assert silo_b.not_after_unix > 0 and not silo_b.revoked
    assert members["silo-gone"].revoked
    assert members["auditor"].role == "auditor" and members["auditor"].last_method == "ListMembers"

    code, _ = rpc_code(lambda: c.stub("silo-a").ListMembers(pb.ListMembersRequest(), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED  # members' details are for admins and auditors only


def test_grafana_dashboard_queries_only_metrics_the_aggregator_exposes(metered):
    dashboard = json.loads((Path(__file__).resolve().parent.parent / "deploy/grafana/cipherfed.json").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{metered.metrics_port}/metrics", timeout=10) as response:
        types = re.findall(r"^# TYPE (\w+) (\w+)$", response.read().decode(), re.M)
    suffixes = {"counter": ["", "_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    exposed = {name + suffix for name, kind in types for suffix in suffixes.get(kind, [""])}
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"cipherfed_[a-z_]+", target["expr"])
    }
    assert queried and queried <= exposed, queried - exposed
