"""A member is its certificate, not its name: attacks with extra certificates from the real CA.

Real aggregator processes over mTLS on 127.0.0.1. The attacker holds a certificate the consortium CA
really issued (an insider at the CA, a renewal never revoked, a mistake), with the name of an
existing member or of nobody the consortium lists.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import grpc
import pytest

from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from tests.helpers import HandSilo, rpc_code, stub_for, tiny_update

pytestmark = pytest.mark.slow
SILOS = ["silo-a", "silo-b", "silo-c", "silo-d"]


def _records(c: LocalConsortium, event: str | None = None) -> list[dict]:
    lines = (c.agg_dir / "state" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if event is None or r["event"] == event]


def _fp(cert_path) -> str:
    return pki.certificate_fingerprint(pki.load_certificate(cert_path))


def _serial(cert_path) -> str:
    return f"{pki.load_certificate(cert_path).serial_number:x}"


def _run_round(c: LocalConsortium, name: str, silos: list[str]) -> str:
    """A job whose round 0 is released (the three silos upload), for attacks on what follows it."""
    spec = job_toml(name, silos, c.fingerprint, ["x"], rounds=2, round_timeout_s=300)
    job = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    for i, silo in enumerate(silos):
        hand = HandSilo(c, silo)
        hand.send(*hand.build(job, 0, tiny_update(i), 10.0 + i))
    return job


@pytest.fixture(scope="module")
def open_consortium(tmp_path_factory):
    """No consortium policy (the demo's setup): names are pinned to certificates on first contact."""
    c = LocalConsortium(tmp_path_factory.mktemp("open"), SILOS)
    c.provision()
    c.write_aggregator_config()
    c.start_aggregator()
    c.write_admin_config()
    yield c
    c.stop_all()


def test_second_certificate_for_a_pinned_name_is_refused_on_every_rpc(open_consortium, tmp_path):
    c = open_consortium
    job = _run_round(c, "pinned", ["silo-a", "silo-b", "silo-c"])  # silo-b's real certificate is now pinned
    imp_cert, imp_key = pki.issue(c.ca_dir, "silo-b", "silo", tmp_path / "imp")
    impostor = stub_for(c.ca_dir / "ca.crt", imp_cert, imp_key, c.port)

    calls = {
        "Poll": lambda: impostor.Poll(pb.PollRequest(), timeout=10),
        "DownloadAggregate": lambda: list(
            impostor.DownloadAggregate(pb.AggregateRequest(job_id=job, round=0), timeout=10)
        ),
        "ReportMetrics": lambda: impostor.ReportMetrics(
            pb.MetricsReport(job_id=job, round=0, metrics={"accuracy": 1.0}), timeout=10
        ),
        "Decline": lambda: impostor.Decline(pb.DeclineRequest(job_id=job, round=1, reasons=["x"]), timeout=10),
        "ServerInfo": lambda: impostor.ServerInfo(pb.ServerInfoRequest(), timeout=10),
    }
    for name, call in calls.items():
        code, msg = rpc_code(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, name
        assert "pinned to certificate" in msg and "cipherfed ca revoke" in msg, name

    # the genuine member is undisturbed and gets its aggregate
    genuine = HandSilo(c, "silo-b")
    header, _, _ = genuine.download(job, 0)
    assert header.contributors == 3
    # the refusals name the impostor's certificate, not only the name it carried
    refused = [r for r in _records(c, "rpc_refused") if r["actor"] == "silo-b"]
    assert len(refused) >= len(calls)
    assert {r["details"]["actor_fingerprint"] for r in refused} == {_fp(imp_cert)}
    assert {r["details"]["actor_serial"] for r in refused} == {_serial(imp_cert)}
    pinned = [r for r in _records(c, "identity_pinned") if r["actor"] == "silo-b"]
    assert [r["details"]["actor_fingerprint"] for r in pinned] == [_fp(c.nodes["silo-b"].cert)]


def test_a_pin_is_released_only_by_revoking_or_expiry(open_consortium, tmp_path):
    c = open_consortium
    old = c.stub("silo-d")
    assert old.ServerInfo(pb.ServerInfoRequest(), timeout=10).caller == "silo-d"
    new_cert, new_key = pki.issue(c.ca_dir, "silo-d", "silo", tmp_path / "renewed")
    new = stub_for(c.ca_dir / "ca.crt", new_cert, new_key, c.port)
    code, _ = rpc_code(lambda: new.ServerInfo(pb.ServerInfoRequest(), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    pki.revoke(c.ca_dir, pki.load_certificate(c.nodes["silo-d"].cert).serial_number)
    assert new.ServerInfo(pb.ServerInfoRequest(), timeout=10).caller == "silo-d"  # the renewal takes over
    code, _ = rpc_code(lambda: old.ServerInfo(pb.ServerInfoRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    repinned = [r for r in _records(c, "identity_repinned") if r["actor"] == "silo-d"]
    assert len(repinned) == 1
    assert repinned[0]["details"]["actor_fingerprint"] == _fp(new_cert)
    assert repinned[0]["details"]["replaces_fingerprint"] == _fp(c.nodes["silo-d"].cert)


def test_audit_records_name_the_callers_certificate(open_consortium):
    c = open_consortium
    job = _run_round(c, "stamped", ["silo-a", "silo-b", "silo-c"])
    records = _records(c)
    uploads = [r for r in records if r["event"] == "upload_accepted" and r["job"] == job]
    assert len(uploads) == 3
    for r in uploads:
        assert r["details"]["actor_fingerprint"] == _fp(c.nodes[r["actor"]].cert)
        assert r["details"]["actor_serial"] == _serial(c.nodes[r["actor"]].cert)
    submitted = next(r for r in records if r["event"] == "job_submitted" and r["job"] == job)
    assert submitted["details"]["actor_fingerprint"] == _fp(c.admin_dir / "coordinator.crt")
    # records about the aggregator's own doings are not stamped with a caller
    released = next(r for r in records if r["event"] == "aggregate_released" and r["job"] == job)
    assert "actor_fingerprint" not in released["details"]
    # and the log still verifies, chain and signatures
    from audit.verify import verify_logs

    result = verify_logs([c.agg_dir / "state" / "audit.jsonl"], pki.load_certificate(c.ca_dir / "ca.crt"))
    assert result.ok, result.summary()


def test_a_cached_identity_is_refused_once_its_certificate_expires(open_consortium, tmp_path):
    c = open_consortium
    now = dt.datetime.now(dt.UTC)
    cert, key = pki.issue(
        c.ca_dir, "silo-x", "silo", tmp_path, days=1, not_before=now - dt.timedelta(days=1) + dt.timedelta(seconds=6)
    )
    not_after = pki.load_certificate(cert).not_valid_after_utc
    stub = stub_for(c.ca_dir / "ca.crt", cert, key, c.port)
    assert stub.ServerInfo(pb.ServerInfoRequest(), timeout=5).caller == "silo-x"  # cached from now on
    time.sleep(max(0.0, (not_after - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
    # the TLS connection was set up while the certificate was valid; the call on it is not
    code, msg = rpc_code(lambda: stub.ServerInfo(pb.ServerInfoRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in msg


# ------------------------------------------------------------------ with a consortium policy
@pytest.fixture(scope="module")
def governed(tmp_path_factory):
    """A consortium policy lists the coordinator and three silos; the provisioned auditor is not listed."""
    c = LocalConsortium(tmp_path_factory.mktemp("gov"), SILOS[:3])
    c.provision()
    members = [("coordinator", "admin", c.admin_dir / "coordinator.crt")] + [
        (n, "silo", c.nodes[n].cert) for n in SILOS[:3]
    ]
    policy = c.agg_dir / "consortium-policy.toml"
    policy.write_text(
        f'kind = "consortium"\nconsortium = "{c.consortium}"\n'
        + "".join(f'[[members]]\nname = "{n}"\nrole = "{r}"\ncert_fingerprint = "{_fp(p)}"\n' for n, r, p in members)
    )
    c.write_aggregator_config(extra='consortium_policy = "consortium-policy.toml"')
    c.start_aggregator()
    c.write_admin_config()
    yield c
    c.stop_all()


def test_policy_pinning_applies_to_every_rpc(governed, tmp_path):
    c = governed
    job = _run_round(c, "governed", SILOS[:3])
    ca = c.ca_dir / "ca.crt"
    # a second certificate with a listed silo's name: no metrics, no decline, no poll in its name
    imp_cert, imp_key = pki.issue(c.ca_dir, "silo-b", "silo", tmp_path / "imp")
    impostor = stub_for(ca, imp_cert, imp_key, c.port)
    for call in (
        lambda: impostor.ReportMetrics(pb.MetricsReport(job_id=job, round=0, metrics={"accuracy": 1.0}), timeout=10),
        lambda: impostor.Decline(pb.DeclineRequest(job_id=job, round=1, reasons=["no"]), timeout=10),
        lambda: impostor.Poll(pb.PollRequest(), timeout=10),
        lambda: list(impostor.DownloadAggregate(pb.AggregateRequest(job_id=job, round=0), timeout=10)),
    ):
        code, msg = rpc_code(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not the certificate the consortium policy" in msg
    # an admin the policy does not list cannot abort, nor read
    rogue_cert, rogue_key = pki.issue(c.ca_dir, "rogue-admin", "admin", tmp_path / "rogue")
    rogue = stub_for(ca, rogue_cert, rogue_key, c.port)
    for call in (
        lambda: rogue.AbortJob(pb.AbortJobRequest(job_id=job, reason="sabotage"), timeout=10),
        lambda: rogue.ListJobs(pb.ListJobsRequest(), timeout=10),
    ):
        code, msg = rpc_code(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not a member of the consortium policy" in msg
    # nor can a second certificate carrying the listed coordinator's name
    twin_cert, twin_key = pki.issue(c.ca_dir, "coordinator", "admin", tmp_path / "twin")
    code, _ = rpc_code(
        lambda: stub_for(ca, twin_cert, twin_key, c.port).AbortJob(pb.AbortJobRequest(job_id=job), timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # the unlisted auditor (a real certificate from the same CA) reads nothing
    code, msg = rpc_code(lambda: c.stub("auditor").GetJobStatus(pb.JobRef(job_id=job), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "auditor" in msg

    status = c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10)
    assert status.status == "running" and not status.declined and not status.rounds[0].metrics
    # the genuine members still work
    real_b = c.stub("silo-b")
    real_b.ReportMetrics(pb.MetricsReport(job_id=job, round=0, metrics={"accuracy": 0.5}), timeout=10)
    status = c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10)
    assert [m.metrics["accuracy"] for m in status.rounds[0].metrics] == [0.5]
    refused = [r for r in _records(c, "rpc_refused") if r["details"].get("actor_fingerprint") == _fp(imp_cert)]
    assert len(refused) == 4
