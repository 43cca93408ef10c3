"""Vertical jobs with real processes: the aggregator, hospital and lab nodes run as processes; the imaging
centre is driven in the test through the same PassiveParty code, recording everything that reaches it."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tenseal as ts

from audit.events import LogSink
from cipherfed.demo_vertical import PARTIES, vertical_job_toml, write_party_data
from cipherfed.localconsortium import LocalConsortium
from crypto.keys import load_public_context
from crypto.psi import hash_id, normalize_id
from protocol import cipherfed_pb2 as pb
from silo_node.client import AggregatorClient
from silo_node.data import LocalData, load_columns
from silo_node.vertical import PassiveParty, Relay, VerticalRunner
from tests.helpers import DEMO_JSON_KEYS, party_credentials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    c = LocalConsortium(tmp_path_factory.mktemp("vertical"), list(PARTIES))
    c.provision(he_keys=False)
    data = write_party_data(c)
    c.write_aggregator_config()
    c.start_aggregator()
    for party in ("hospital", "lab"):
        c.write_node_config(party, keys='scope = "consortium"')
        c.start_node(party)
    c.write_node_config("imaging", keys='scope = "consortium"')  # not started: the test plays this party
    c.write_admin_config()
    yield c, data
    c.stop_all()


class PassiveDriver:
    """The imaging centre, run in-process with a recording relay."""

    def __init__(self, c, job_id, spec_text, data=None):
        from protocol.jobspec import parse_job_spec

        self.spec = parse_job_spec(spec_text)
        node = c.nodes["imaging"]
        self.client = AggregatorClient(f"127.0.0.1:{c.port}", c.tls("imaging"), "localhost")
        self.stop = threading.Event()
        self.received = []  # (sender, kind, seq, payloads)
        relay = Relay(self.client, job_id, self.stop.is_set, timeout_s=120)
        relay.on_receive = lambda sender, kind, seq, payloads: self.received.append((sender, kind, seq, payloads))
        if data is None:
            data = load_columns(node.data, self.spec.vertical.features["imaging"], None, "patient_id")
        directory = node.dir / "state" / "jobs" / job_id
        directory.mkdir(parents=True, exist_ok=True)
        self.party = PassiveParty(
            job_id,
            self.spec,
            "imaging",
            data,
            relay,
            self.client,
            LogSink("test"),
            directory,
            party_credentials(c, "imaging"),
        )
        self.errors = []

        def declined(reason):  # what the node does when its side fails
            self.errors.append(reason)
            self.client.decline(job_id, -1, [f"imaging: {reason}"])

        self.runner = VerticalRunner(self.party, declined)
        self.runner.stopped = self.stop
        self.runner.step(pb.Task(job_id=job_id, job_status="running"))


def submit(c, spec_text):
    return c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec_text), timeout=30).job_id


def wait(c, job_id, timeout=180):
    stub = c.stub("coordinator")
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=10)
        if status.status != "running":
            return status
        time.sleep(0.2)
    raise AssertionError(f"{job_id} still running")


@pytest.fixture(scope="module")
def trained(world):
    c, data = world
    spec = vertical_job_toml("wire", "vertical", data["columns"], epochs=3)
    job_id = submit(c, spec)
    imaging = PassiveDriver(c, job_id, spec)
    status = wait(c, job_id)
    assert status.status == "completed", status.reason
    yield c, data, job_id, imaging
    imaging.stop.set()


def test_a_passive_party_receives_nothing_in_plaintext_but_blinded_ids_positions_and_masked_sums(trained):
    c, data, job_id, imaging = trained
    kinds = {kind for _, kind, _, _ in imaging.received}
    assert kinds == {"psi-a", "align", "d", "m", "predict-req"}, kinds
    assert {sender for sender, _, _, _ in imaging.received} == {"hospital"}  # never the lab's messages
    all_ids = [f"P-{int(r):05d}" for r in range(len(data["y"]))]
    hashes = {hash_id(normalize_id(i), job_id) for i in all_ids}
    public = load_public_context(
        c.stub("imaging").GetKeyMaterial(pb.KeyMaterialRequest(scope=job_id), timeout=10).public_context
    )
    masked_values = []
    for _, kind, _, payloads in imaging.received:
        blob = b"".join(payloads)
        assert not any(i.encode() in blob or normalize_id(i).encode() in blob for i in all_ids[:100])
        if kind == "psi-a":  # the hospital's ids: blinded X25519 points, never the plain hashes
            points = {blob[i : i + 32] for i in range(0, len(blob), 32)}
            assert len(blob) % 32 == 0 and not points & hashes
        elif kind in ("align", "predict-req"):  # positions in the aligned order, nothing else
            assert set(json.loads(blob)) == {"positions"}
        elif kind == "d":  # residuals: CKKS ciphertexts this party cannot decrypt
            for p in payloads:
                vector = ts.ckks_vector_from(public.tenseal_context, p)
                with pytest.raises(ValueError):
                    vector.decrypt()
        elif kind == "m":  # masked per-column sums, dominated by this party's own masks
            masked_values.extend(np.frombuffer(blob, dtype="<f8").tolist())
    assert len(masked_values) >= 30 and np.mean(np.abs(masked_values) > 100) > 0.9
    labels = data["y"].astype("<f8").tobytes()
    assert all(labels[:64] not in b"".join(p) for _, _, _, p in imaging.received)


def test_each_party_ends_with_only_its_own_weights(trained):
    c, data, job_id, imaging = trained
    hospital = np.load(c.nodes["hospital"].dir / "state" / "jobs" / job_id / "vertical_model.npz")
    lab = np.load(c.nodes["lab"].dir / "state" / "jobs" / job_id / "vertical_model.npz")
    assert hospital["weights"].shape == (10,) and "bias" in hospital.files  # the intercept is the active party's
    assert lab["weights"].shape == (10,) and "bias" not in lab.files
    assert imaging.party.weights.shape == (10,)


def test_joint_prediction_matches_every_partys_partial_scores(trained, tmp_path):
    c, data, job_id, imaging = trained
    hospital_dir = c.nodes["hospital"].dir / "state" / "jobs" / job_id
    aligned = json.loads((hospital_dir / "aligned_ids.json").read_text())
    chosen = aligned[:15]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("patient_id\n" + "\n".join(chosen) + "\n")
    out = tmp_path / "scores.csv"
    proc = _predict(c, job_id, ids_file, "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    scores = [float(line.split(",")[1]) for line in out.read_text().splitlines()[1:]]
    # recompute from each party's own weights and own standardised columns
    hospital = np.load(hospital_dir / "vertical_model.npz")
    lab = np.load(c.nodes["lab"].dir / "state" / "jobs" / job_id / "vertical_model.npz")
    positions = list(range(15))
    original = [int(normalize_id(i).split("-")[1]) for i in chosen]
    xh = (data["x"][original][:, 0:10] - hospital["mean"]) / hospital["std"]
    xl = (data["x"][original][:, 10:20] - lab["mean"]) / lab["std"]
    z = xh @ hospital["weights"] + float(hospital["bias"]) + xl @ lab["weights"]
    z += imaging.party.x[positions] @ imaging.party.weights
    assert np.abs(np.asarray(scores) - 1 / (1 + np.exp(-z))).max() < 1e-4
    ids_file.write_text("P-99999\n")
    bad = _predict(c, job_id, ids_file)
    assert bad.returncode == 1 and "not among the job's aligned entities" in bad.stdout


def _predict(c, job_id, ids_file, *extra):
    """`cipherfed job predict` at the active party (the hospital), as its operator would run it."""
    command = ["job", "predict", job_id, "--ids", str(ids_file), "--config", str(c.nodes["hospital"].config)]
    return subprocess.run(
        [sys.executable, "-m", "cipherfed", *command, *extra], capture_output=True, text=True, timeout=120
    )


def _failing_job(c, data, name, passive_data=None, min_entities=50):
    spec = vertical_job_toml(name, "vertical", data["columns"], epochs=1).replace(
        "min_entities = 50", f"min_entities = {min_entities}"
    )
    job_id = submit(c, spec)
    imaging = PassiveDriver(c, job_id, spec, passive_data)
    status = wait(c, job_id)
    imaging.stop.set()
    assert status.status == "failed"
    assert not (c.nodes["hospital"].dir / "state" / "jobs" / job_id / "vertical_model.npz").exists()  # nothing trained
    return status


def _imaging_data(c, ids):
    base = load_columns(c.nodes["imaging"].data, [], None, "patient_id")
    x = np.random.default_rng(0).normal(size=(len(ids), 10))
    return LocalData(x, None, ids, [f"c{i}" for i in range(10)], base.source_fingerprint)


def test_intersection_below_min_entities_is_a_job_error(world):
    c, data = world
    status = _failing_job(c, data, "toosmall", min_entities=100_000)
    assert "common entities; the job needs at least 100000" in status.reason


def test_duplicated_ids_are_a_job_error(world):
    c, data = world
    ids = [f"P-{i:05d}" for i in range(300)] + ["p-00001 "]  # normalises to a duplicate
    status = _failing_job(c, data, "dups", passive_data=_imaging_data(c, ids))
    assert "duplicated id" in status.reason and "imaging" in status.reason


def test_empty_intersection_is_a_job_error(world):
    c, data = world
    status = _failing_job(c, data, "disjoint", passive_data=_imaging_data(c, [f"X-{i}" for i in range(300)]))
    assert "no common entities" in status.reason


def test_vertical_demo_matches_centralized(tmp_path):
    out = tmp_path / "v.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cipherfed",
            "demo",
            "--partition",
            "vertical",
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in (*DEMO_JSON_KEYS, "intersection_size"):
        assert key in result
    assert result["partition"] == "vertical" and 250 < result["intersection_size"] < 569
    assert result["final"]["accuracy"] >= result["centralized"]["accuracy"] - 0.02
    assert result["audit"]["verified"]


def test_vertical_egress_is_in_every_partys_audit_log_and_the_report(trained):
    c, data, job_id, imaging = trained
    for party in ("hospital", "lab"):
        records = [json.loads(line) for line in (c.nodes[party].dir / "state" / "audit.jsonl").read_text().splitlines()]
        sent = [r for r in records if r["event"] == "data_sent" and r["job"] == job_id]
        assert sent, party
        for r in sent:
            assert r["details"]["bytes"] > 0 and r["details"]["form"]
            if r["details"]["kind"] in ("u", "d", "g", "p"):
                assert r["details"]["encrypted"] is True
    from audit.report import build_report

    logs = [c.agg_dir / "state" / "audit.jsonl"] + [
        c.nodes[p].dir / "state" / "audit.jsonl" for p in ("hospital", "lab")
    ]
    html, verification = build_report(logs)
    assert verification.ok and verification.anchors_checked > 0  # the active party's epoch reports anchor its log
    assert "messages relayed through the aggregator" in html and "residuals (CKKS ciphertext)" in html
    assert "blinded ids (X25519)" in html


class _PartyThatLostTheAggregator:
    """Stands in for a party whose relay could not reach the aggregator (a process we cannot fake)."""

    job_id = "job-unreachable"

    def run(self):
        raise ConnectionError("failed to connect to all addresses")


def _run_to_end(runner):
    runner.step(pb.Task(job_id=runner.party.job_id, job_status="running"))
    runner._thread.join(10)
    assert not runner._thread.is_alive()


def test_a_failure_that_cannot_be_reported_stays_inside_the_party_thread(monkeypatch, caplog):
    escaped = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    reported = []

    def report(reason):  # the node's callback: audit, then Decline over gRPC, which fails too
        reported.append(reason)
        raise ConnectionError("aggregator still unreachable")

    runner = VerticalRunner(_PartyThatLostTheAggregator(), report)
    with caplog.at_level("WARNING", logger="silo_node.vertical"):
        _run_to_end(runner)
    assert escaped == []
    assert runner.status == "failed"
    assert reported == ["ConnectionError: failed to connect to all addresses"]
    assert "job-unreachable" in caplog.text and "could not be reported" in caplog.text


def test_a_party_that_fails_after_its_job_ended_reports_nothing(monkeypatch):
    reported = []
    runner = VerticalRunner(_PartyThatLostTheAggregator(), reported.append)
    runner.stopped.set()  # the job was aborted or failed elsewhere
    _run_to_end(runner)
    assert runner.status == "failed" and reported == []
