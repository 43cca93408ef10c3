"""A member that floods, hangs or sends absurd values cannot fail a job, starve others or bloat state.

Real aggregator process over mTLS on 127.0.0.1, real ciphertexts; the attacker is a member with its
own genuine certificate (silo-c takes part in the jobs, silo-d in none).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audit.log import MAX_DETAILS_BYTES, AuditLog
from audit.verify import verify_logs
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from crypto.packing import Layout, Manifest, TensorSpec
from protocol import cipherfed_pb2 as pb
from protocol.messages import MAX_REASON_CHARS, MAX_REASONS, clip_reasons, manifest_from_proto
from protocol.upload import SignedUpload
from tests.helpers import HandSilo, rpc_code, tiny_update

pytestmark = pytest.mark.slow
IDLE_S = 3.0
PER_IDENTITY = 4
LIMITS = f"stream_idle_timeout_s = {IDLE_S}\nmax_streams_per_identity = {PER_IDENTITY}\n"


@pytest.fixture(scope="module")
def agg(tmp_path_factory):
    c = LocalConsortium(tmp_path_factory.mktemp("res"), ["silo-a", "silo-b", "silo-c", "silo-d"])
    c.provision()
    c.write_aggregator_config(extra=LIMITS)
    c.start_aggregator()
    c.write_admin_config()
    yield c
    c.stop_all()


def _submit(c: LocalConsortium, name: str, **kw) -> str:
    spec = job_toml(name, ["silo-a", "silo-b", "silo-c"], c.fingerprint, ["x"], **kw)
    return c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id


def _log_size(c: LocalConsortium) -> int:
    return (c.agg_dir / "state" / "audit.jsonl").stat().st_size


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _held_stream(first: list[pb.UploadMessage], release: threading.Event):
    """An upload stream that sends ``first`` and then nothing until ``release`` is set."""
    yield from first
    release.wait(60)


# ------------------------------------------------------------------ metrics
def test_metrics_only_once_per_released_round_and_bounded(agg):
    c = agg
    a = c.stub("silo-a")
    job = _submit(c, "metrics", rounds=1, round_timeout_s=300)  # rounds 0 (statistics) and 1

    def report(metrics, round_index=0, stub=a):
        return lambda: stub.ReportMetrics(pb.MetricsReport(job_id=job, round=round_index, metrics=metrics), timeout=10)

    code, msg = rpc_code(report({"accuracy": 0.7}))  # nothing released yet: nothing to report on
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "released no aggregate" in msg
    for i, name in enumerate(["silo-a", "silo-b", "silo-c"]):
        hand = HandSilo(c, name)
        hand.send(*hand.build(job, 0, tiny_update(i), 10.0))
    report({"accuracy": 0.7})()
    report({"accuracy": 0.7})()  # an identical retry is idempotent
    code, msg = rpc_code(report({"accuracy": 1.0}))  # re-reporting a better number is not
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already reported" in msg
    code, msg = rpc_code(report({"accuracy": 0.9}, round_index=10**12))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "round" in msg
    code, msg = rpc_code(report({f"m{i}": 1.0 for i in range(20_000)}, round_index=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most 16" in msg
    for bad in (float("nan"), float("inf"), -float("inf")):
        code, msg = rpc_code(report({"accuracy": bad}, round_index=1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "metrics[accuracy]" in msg and "finite" in msg
    code, msg = rpc_code(report({"../x y": 1.0}, round_index=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metric name" in msg
    status = c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10)
    assert [dict(m.metrics) for m in status.rounds[0].metrics] == [{"accuracy": 0.7}]
    assert c.processes["aggregator"].poll() is None


# ------------------------------------------------------------------ layout
def _huge_header(hand: HandSilo, job: str, values: int) -> pb.UploadHeader:
    """A correctly signed header declaring ``values`` values (the attacker never sends the chunks)."""
    header, _ = hand.build(job, 0, tiny_update(5), 1.0)
    real = manifest_from_proto(header.manifest)
    layout = Layout((TensorSpec("w", (values,), "float64", 0),), values)
    count = -(-(values + 1) // real.values_per_chunk)
    manifest = Manifest(
        real.profile,
        real.fingerprint,
        layout,
        values + 1,
        real.values_per_chunk,
        real.scale_bits,
        (b"\0" * 32,) * count,
    )
    return SignedUpload.sign(hand.key, job, 0, manifest).to_proto()


def test_an_unfinished_upload_fixes_no_layout_and_idle_streams_are_cancelled(agg):
    c = agg
    job = _submit(c, "layout", rounds=1, round_timeout_s=8, max_round_retries=0)
    a, b, attacker = (HandSilo(c, n) for n in ("silo-a", "silo-b", "silo-c"))
    # beyond the configured bound (2^28 values by default) a declared size is refused at the header
    huge = iter([pb.UploadMessage(header=_huge_header(attacker, job, 1 << 29))])
    code, msg = rpc_code(lambda: attacker.stub.Upload(huge, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "manifest.value_count" in msg
    # a 2^27-value layout declared, then the attacker hangs up: that fixes nothing
    hangup = iter([pb.UploadMessage(header=_huge_header(attacker, job, 1 << 27))])
    code, msg = rpc_code(lambda: attacker.stub.Upload(hangup, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in msg
    # a genuine upload of the honest layout, abandoned after its first chunk: rolled back, no trace
    header, chunks = attacker.build(job, 0, tiny_update(7, shape=(20_000,)), 1.0)
    assert len(chunks) > 1
    partial = iter([pb.UploadMessage(header=header), pb.UploadMessage(chunk=chunks[0])])
    code, msg = rpc_code(lambda: attacker.stub.Upload(partial, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in msg
    # the 2^27-value layout declared again and this time left hanging
    release = threading.Event()
    first = [pb.UploadMessage(header=_huge_header(attacker, job, 1 << 27))]
    held = attacker.stub.Upload.future(_held_stream(first, release), timeout=60)
    time.sleep(0.5)
    ups = {"a": tiny_update(1, shape=(20_000,)), "b": tiny_update(2, shape=(20_000,))}
    assert a.send(*a.build(job, 0, ups["a"], 3.0)).bytes > 0  # both honest uploads are accepted
    assert b.send(*b.build(job, 0, ups["b"], 5.0)).bytes > 0
    # the hanging stream is cancelled by the server once idle (and rolled back)
    with pytest.raises(grpc.RpcError):
        held.result(timeout=IDLE_S + 10)
    release.set()
    for _ in range(100):  # the round closes at its deadline with a and b
        status = c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10)
        if status.rounds and status.rounds[0].status != "open":
            break
        time.sleep(0.2)
    assert status.rounds[0].status == "closed", status
    agg_header, manifest, agg_chunks = a.download(job, 0)
    assert agg_header.contributors == 2
    mean = a.decrypt(manifest, agg_chunks)
    expected = (ups["a"]["w"] * 3.0 + ups["b"]["w"] * 5.0) / 8.0
    assert mean.total_weight == pytest.approx(8.0, abs=1e-6)
    assert np.abs(mean.tensors["w"] - expected).max() < 1e-6
    records = [json.loads(line) for line in (c.agg_dir / "state" / "audit.jsonl").read_text().splitlines()]
    assert any("nothing received for" in str(r["details"].get("reason", "")) for r in records)


def test_a_tiny_upload_committed_first_cannot_fail_the_job(agg):
    """Issue 11 item 9 (reviewer's x4m): silo-c commits a valid, signed 1-value ciphertext under the
    shared key before anyone has trained. Its layout no longer binds the round: the honest uploads are
    accepted, their sum released, the job completes, and silo-c is left out by name in the audit log."""
    c = agg
    job = _submit(c, "tinyfirst", rounds=1, scaling="none", round_timeout_s=60, max_round_retries=0)
    a, b, attacker = (HandSilo(c, n) for n in ("silo-a", "silo-b", "silo-c"))
    receipt = attacker.send(*attacker.build(job, 0, {"junk": np.zeros(1)}, 1.0))
    assert receipt.bytes > 0  # committed first: under the old rule this fixed the round's layout
    ups = {"a": tiny_update(11), "b": tiny_update(12)}
    assert a.send(*a.build(job, 0, ups["a"], 2.0)).bytes > 0  # was: INVALID_ARGUMENT "layout ... differs"
    assert b.send(*b.build(job, 0, ups["b"], 6.0)).bytes > 0
    status = c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10)
    assert status.status == "completed", status.reason
    agg_header, manifest, agg_chunks = a.download(job, 0)
    assert agg_header.contributors == 2
    mean = a.decrypt(manifest, agg_chunks)
    assert mean.total_weight == pytest.approx(8.0, abs=1e-6)
    for name in ("w", "b"):
        expected = (ups["a"][name] * 2.0 + ups["b"][name] * 6.0) / 8.0
        assert np.abs(mean.tensors[name] - expected).max() < 1e-6
    records = [json.loads(line) for line in (c.agg_dir / "state" / "audit.jsonl").read_text().splitlines()]
    outvoted = [r["details"] for r in records if r["event"] == "layout_outvoted" and r["job"] == job]
    assert len(outvoted) == 1 and outvoted[0]["contributors"] == ["silo-c"]
    assert outvoted[0]["released_contributors"] == ["silo-a", "silo-b"]
    assert c.processes["aggregator"].poll() is None


# ------------------------------------------------------------------ bounded fields and audit records
def test_megabyte_fields_are_refused_and_never_reach_the_audit_log(agg):
    c = agg
    job = _submit(c, "bounds", rounds=1, round_timeout_s=300)
    huge = "x" * 3_500_000
    before = _log_size(c)
    code, msg = rpc_code(
        lambda: c.stub("silo-a").Decline(pb.DeclineRequest(job_id=job, round=0, reasons=[huge]), timeout=30)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reasons[0]" in msg and len(msg) < 300
    code, msg = rpc_code(lambda: c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=huge), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "job_id" in msg and len(msg) < 300
    code, msg = rpc_code(
        lambda: c.stub("coordinator").AbortJob(pb.AbortJobRequest(job_id=job, reason=huge), timeout=30)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reason" in msg
    code, msg = rpc_code(
        lambda: c.stub("silo-a").Decline(pb.DeclineRequest(job_id=job, round=0, reasons=["r"] * 1000), timeout=30)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"at most {MAX_REASONS}" in msg
    upload = iter([pb.UploadMessage(header=pb.UploadHeader(job_id=huge, round=0))])
    code, msg = rpc_code(lambda: c.stub("silo-a").Upload(upload, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "header.job_id" in msg and len(msg) < 300
    code, msg = rpc_code(
        lambda: c.stub("silo-a").ReportMetrics(pb.MetricsReport(job_id=job, round=0, audit_head=huge), timeout=30)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "audit_head" in msg and len(msg) < 300
    assert _log_size(c) - before < 16_000  # six refusals, a few hundred bytes each
    status = c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10)
    assert status.status == "running" and not status.declined
    # an honest silo clips its own reasons to fit, so its decline is never lost to the bound
    clipped = clip_reasons(["y" * 10 * MAX_REASON_CHARS] * (MAX_REASONS + 5))
    c.stub("silo-a").Decline(pb.DeclineRequest(job_id=job, round=-1, reasons=clipped), timeout=30)
    assert c.stub("coordinator").GetJobStatus(pb.JobRef(job_id=job), timeout=10).declined == ["silo-a"]


def test_the_audit_log_bounds_every_record_in_one_place(tmp_path):
    """Whatever a caller passes (here 3.5 MB of text and 100,000 list items), a record stays small
    and the log still verifies."""
    ca = tmp_path / "ca"
    pki.init_ca(ca, "Test")
    cert, key = pki.issue(ca, "aggregator", "aggregator", tmp_path / "agg")
    log = AuditLog(tmp_path / "audit.jsonl", pki.load_private_key(key), pki.load_certificate(cert))
    log.append("job_declined", "silo-a", job="j", reasons=["x" * 3_500_000], items=list(range(100_000)))
    log.append("rpc_refused", "unknown", job="y" * 3_500_000, reason="z" * 3_500_000)
    log.close()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert all(len(line) < MAX_DETAILS_BYTES + 8_000 for line in lines)
    record = json.loads(lines[1])
    assert record["details"]["reasons"][0].endswith("[truncated: 3495904 more characters]")
    assert record["details"]["items"][-1] == "...[truncated: 99744 more items]"
    result = verify_logs([tmp_path / "audit.jsonl"], pki.load_certificate(ca / "ca.crt"))
    assert result.ok, result.summary()


def test_a_non_participants_send_is_refused_before_it_is_read(agg):
    c = agg
    job = _submit(c, "relay", rounds=1, round_timeout_s=300)
    pid = c.processes["aggregator"].pid
    stub = c.stub("silo-d")  # a member, but no party of any vertical job
    stub.ServerInfo(pb.ServerInfoRequest(), timeout=10)
    before = _rss_kb(pid)
    for size in (1 << 20, 3_900_000):  # 100 x 1 MiB and 40 x 3.9 MB
        count = 100 if size == 1 << 20 else 40
        payload = b"\x01" * size
        messages = (
            pb.RelayMessage(job_id=job, to="silo-a", kind="psi-a", seq=0, payload=payload) for _ in range(count)
        )
        code, _ = rpc_code(lambda m=messages: stub.Send(m, timeout=60))
        assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    grown_mb = (_rss_kb(pid) - before) / 1024
    assert grown_mb < 40, f"aggregator RSS grew by {grown_mb:.0f} MB for 256 MB refused"
    assert c.processes["aggregator"].poll() is None


# ------------------------------------------------------------------ availability
def _latency(call, n: int = 5) -> float:
    worst = 0.0
    for _ in range(n):
        t = time.perf_counter()
        call()
        worst = max(worst, time.perf_counter() - t)
    return worst


def test_forty_idle_streams_from_one_member_starve_nobody(agg):
    c = agg
    flooder = c.stub("silo-d")
    health = health_pb2_grpc.HealthStub(c.channel("silo-d"))
    poll = lambda: c.stub("silo-a").Poll(pb.PollRequest(), timeout=5)  # noqa: E731
    list_jobs = lambda: c.stub("coordinator").ListJobs(pb.ListJobsRequest(), timeout=5)  # noqa: E731
    normal = max(_latency(poll), _latency(list_jobs))
    release = threading.Event()
    uploads = [flooder.Upload.future(_held_stream([], release), timeout=30) for _ in range(40)]
    watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(40)]
    try:
        time.sleep(1.0)
        # within their normal latency (a loaded test machine gets some slack); without the limits
        # both calls wait for a thread until their deadline
        assert _latency(poll) < max(1.0, 4 * normal)
        assert _latency(list_jobs) < max(1.0, 4 * normal)
        # beyond the per-identity limit the streams are refused, with a reason (those admitted are
        # cancelled once idle, so a few later ones may be admitted in turn)
        deadline = time.time() + 30
        while not all(f.done() for f in uploads) and time.time() < deadline:
            time.sleep(0.2)
        refused = [f for f in uploads if f.done() and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(refused) >= 40 - 3 * PER_IDENTITY
        assert "at most 4 per identity" in refused[0].details()
        # another member can still open streams of its own
        hand = HandSilo(c, "silo-a")
        job = _submit(c, "starve", rounds=1, round_timeout_s=300)
        assert hand.send(*hand.build(job, 0, tiny_update(1), 1.0)).bytes > 0
    finally:
        release.set()
        for w in watches:
            w.cancel()
        for u in uploads:
            u.cancel()
    assert c.processes["aggregator"].poll() is None
