"""Security behaviour of a real aggregator process over mTLS on 127.0.0.1."""

import datetime as dt

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cipherfed.localconsortium import job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from tests.helpers import HandSilo, rpc_code, stub_for, tiny_update


def _submit(c, name, **kw):
    spec = job_toml(name, ["silo-a", "silo-b", "silo-c"], c.fingerprint, ["x"], **kw)
    return c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id


def test_tls_handshake_refuses_foreign_missing_and_expired_certificates(running_aggregator, tmp_path):
    c = running_aggregator
    ca = c.ca_dir / "ca.crt"
    pki.init_ca(tmp_path / "evil", "Evil")
    foreign_cert, foreign_key = pki.issue(tmp_path / "evil", "silo-a", "silo", tmp_path / "f")
    expired_cert, expired_key = pki.issue(
        c.ca_dir, "silo-x", "silo", tmp_path / "e", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=5)
    )
    for cert, key in ((foreign_cert, foreign_key), (None, None), (expired_cert, expired_key)):
        code, _ = rpc_code(lambda: stub_for(ca, cert, key, c.port).ServerInfo(pb.ServerInfoRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no RPC reaches the service
    # and the aggregator is still serving
    info = c.stub("coordinator").ServerInfo(pb.ServerInfoRequest(), timeout=5)
    assert (info.caller, info.caller_role) == ("coordinator", "admin")


def test_health_service_answers_over_mtls(running_aggregator):
    stub = health_pb2_grpc.HealthStub(running_aggregator.channel("silo-a"))
    reply = stub.Check(health_pb2.HealthCheckRequest(service="cipherfed.v1.Consortium"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_roles_are_enforced_from_the_certificate(running_aggregator):
    c = running_aggregator
    spec = job_toml("rolecheck", ["silo-a", "silo-b"], c.fingerprint, ["x"])
    code, msg = rpc_code(lambda: c.stub("silo-a").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "role 'silo'" in msg
    code, _ = rpc_code(lambda: c.stub("silo-a").ListJobs(pb.ListJobsRequest(), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = rpc_code(lambda: c.stub("coordinator").Poll(pb.PollRequest(), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    auditor = c.stub("auditor")
    assert auditor.ListJobs(pb.ListJobsRequest(), timeout=5) is not None  # read-only access works
    code, _ = rpc_code(lambda: auditor.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = rpc_code(lambda: auditor.AbortJob(pb.AbortJobRequest(job_id="x"), timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_revocation_takes_effect_without_restart(running_aggregator, tmp_path):
    c = running_aggregator
    cert, key = pki.issue(c.ca_dir, "silo-r", "silo", tmp_path)
    stub = stub_for(c.ca_dir / "ca.crt", cert, key, c.port)
    assert stub.ServerInfo(pb.ServerInfoRequest(), timeout=5).caller == "silo-r"
    pki.revoke(c.ca_dir, pki.load_certificate(cert).serial_number)
    code, msg = rpc_code(lambda: stub.ServerInfo(pb.ServerInfoRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in msg


def test_invalid_job_spec_gets_field_level_error(running_aggregator):
    c = running_aggregator
    bad = job_toml("bad", ["silo-a", "silo-b"], c.fingerprint, ["x"]).replace("rounds = 5", "rounds = 0")
    code, msg = rpc_code(lambda: c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=bad), timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rounds" in msg and "greater than or equal to 1" in msg
    unknown_key = job_toml("nokey", ["silo-a", "silo-b"], "0" * 32, ["x"])
    code, msg = rpc_code(lambda: c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=unknown_key), timeout=5))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "cipherfed keys create" in msg


def test_uploads_refused_without_disturbing_the_round(running_aggregator):
    c = running_aggregator
    job = _submit(c, "uploads", rounds=2, round_timeout_s=300)
    a, b, cc, d = (HandSilo(c, n) for n in ("silo-a", "silo-b", "silo-c", "silo-d"))
    ups = {n: tiny_update(i) for i, n in enumerate(("a", "b", "c"))}
    weights = {"a": 120.0, "b": 300.0, "c": 75.0}

    # silo A cannot upload as B: there is no field to claim B, and B's signature fails against A's certificate
    header, chunks = a.build(job, 0, ups["a"], weights["a"], signer=b.key)
    code, msg = rpc_code(lambda: a.send(header, chunks))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "signature" in msg

    # a non-member silo is refused
    header, chunks = d.build(job, 0, ups["a"], 1.0)
    code, msg = rpc_code(lambda: d.send(header, chunks))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "not a participant" in msg

    # garbage chunks (right count, wrong bytes) and a stream larger than its manifest
    header, chunks = a.build(job, 0, ups["a"], weights["a"])
    rng = np.random.default_rng(0)
    garbage = [bytes(rng.integers(0, 256, len(ch), dtype=np.uint8)) for ch in chunks]
    code, msg = rpc_code(lambda: a.send(header, garbage))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "digest" in msg
    code, msg = rpc_code(lambda: a.send(header, chunks + chunks[:1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "larger than its manifest" in msg
    code, msg = rpc_code(lambda: a.send(header, chunks[:0]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in msg

    # ciphertexts under another key (wrong fingerprint)
    from crypto.engine import SumEncryptor
    from crypto.keys import generate_key_set

    real = a.encryptor
    a.encryptor = SumEncryptor(generate_key_set("sum"))
    header_wrong, chunks_wrong = a.build(job, 0, ups["a"], weights["a"])
    a.encryptor = real
    code, msg = rpc_code(lambda: a.send(header_wrong, chunks_wrong))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "under key" in msg

    # the genuine upload is accepted; an identical retry is idempotent; a different one is a duplicate
    receipt = a.send(header, chunks)
    assert receipt.bytes > 0 and not receipt.already_received
    assert a.send(header, chunks).already_received
    header2, chunks2 = a.build(job, 0, tiny_update(99), weights["a"])
    code, msg = rpc_code(lambda: a.send(header2, chunks2))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "duplicate" in msg

    saved_b = b.build(job, 0, ups["b"], weights["b"])
    b.send(*saved_b)
    cc.send(*cc.build(job, 0, ups["c"], weights["c"]))  # all three reported: round 0 closes

    # replay of round 0's upload into round 1: the round is closed; relabelled, the signature fails
    code, msg = rpc_code(lambda: b.send(*saved_b))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "closed" in msg
    relabelled = pb.UploadHeader()
    relabelled.CopyFrom(saved_b[0])
    relabelled.round = 1
    code, msg = rpc_code(lambda: b.send(relabelled, saved_b[1]))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "signature" in msg

    # none of the refused uploads touched the sum: it is exactly the weighted mean of a, b, c
    agg_header, manifest, agg_chunks = a.download(job, 0)
    assert agg_header.contributors == 3
    mean = a.decrypt(manifest, agg_chunks)
    total = sum(weights.values())
    assert mean.total_weight == pytest.approx(total, abs=1e-6)
    expected = sum(ups[k]["w"] * weights[k] for k in ups) / total
    assert np.abs(mean.tensors["w"] - expected).max() < 1e-6

    status = c.stub("auditor").GetJobStatus(pb.JobRef(job_id=job), timeout=5)
    assert status.rounds[0].contributors == ["silo-a", "silo-b", "silo-c"]
    assert status.current_round == 1
    # the aggregate is for participants only
    code, _ = rpc_code(lambda: d.download(job, 0))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_unknown_job_and_round(running_aggregator):
    c = running_aggregator
    a = HandSilo(c, "silo-a")
    header, chunks = a.build("no-such-job", 0, tiny_update(1), 10.0)
    code, msg = rpc_code(lambda: a.send(header, chunks))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown job" in msg
    job = _submit(c, "rounds", rounds=2, round_timeout_s=300)
    header, chunks = a.build(job, 5, tiny_update(1), 10.0)
    code, msg = rpc_code(lambda: a.send(header, chunks))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not open" in msg


def test_garbage_streams_do_not_crash_the_aggregator(running_aggregator):
    c = running_aggregator
    a = HandSilo(c, "silo-a")
    job = _submit(c, "garbage", rounds=1, round_timeout_s=300)
    header, chunks = a.build(job, 0, tiny_update(3), 10.0)
    rng = np.random.default_rng(1)
    streams = [
        [pb.UploadMessage(chunk=b"\x00" * 10)],  # no header
        [pb.UploadMessage(header=header), pb.UploadMessage(header=header)],  # header twice
        [pb.UploadMessage(header=pb.UploadHeader(job_id=job, round=0))],  # empty manifest
    ]
    for i in range(20):  # bit-flipped chunks behind a valid signed header
        bad = bytearray(chunks[0])
        bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
        streams.append([pb.UploadMessage(header=header), pb.UploadMessage(chunk=bytes(bad))])
    for stream in streams:
        code, _ = rpc_code(lambda s=stream: a.stub.Upload(iter(s), timeout=30))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert c.processes["aggregator"].poll() is None
    assert a.send(header, chunks).bytes > 0  # and the genuine upload still goes through
