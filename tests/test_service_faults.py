"""Faults with real processes: a silo killed mid-round, the aggregator killed and restarted."""

import signal
import time

import numpy as np
import pytest

from cipherfed.localconsortium import LocalConsortium, job_toml
from protocol import cipherfed_pb2 as pb
from tests.helpers import breast_cancer_parts

pytestmark = pytest.mark.slow


def _consortium(tmp_path, silos):
    names = [f"h{i + 1}" for i in range(silos)]
    c = LocalConsortium(tmp_path / "c", names)
    c.provision()
    data, parts = breast_cancer_parts(silos)
    for name, rows in zip(names, parts):
        c.write_data(name, data.x_train[rows], data.y_train[rows], data.columns)
    return c, data, names


def _wait(stub, job_id, predicate, timeout=120, poll=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=10)
        if predicate(status):
            return status
        time.sleep(poll)
    raise AssertionError(f"timed out; last status {status.status} round {status.current_round}: {status.reason}")


def test_one_of_four_silos_killed_mid_round_round_completes_with_quorum(tmp_path):
    c, data, names = _consortium(tmp_path, 4)
    try:
        stub = c.start_all()
        spec = job_toml("drop", names, c.fingerprint, data.columns, rounds=3, min_silos=3, round_timeout_s=8)
        job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10).job_id
        _wait(stub, job, lambda s: s.current_round >= 1, poll=0.05)
        # Freeze h4 first: from here no round can complete without it before its deadline, so the job
        # cannot finish before the kill lands (healthy rounds take ~0.2 s). Then kill it.
        c.processes["h4"].send_signal(signal.SIGSTOP)
        c.kill("h4")
        status = _wait(stub, job, lambda s: s.status != "running", timeout=120)
        assert status.status == "completed", status.reason
        missed = [r for r in status.rounds if "h4" not in r.contributors]
        assert missed and missed[-1] is status.rounds[-1]  # h4 is absent from every round after its death
        for r in missed:
            assert r.contributors == ["h1", "h2", "h3"]
            assert "deadline" in r.reason  # closed by the deadline with the three that reported
        assert all(len(r.contributors) >= 3 for r in status.rounds)
    finally:
        c.stop_all()


def test_aggregator_sigkilled_mid_job_restarts_and_completes(tmp_path):
    c, data, names = _consortium(tmp_path, 3)
    try:
        c.write_aggregator_config()
        port = c.start_aggregator()
        c.write_aggregator_config(port)  # the restart must come back on the same address
        for n in names:
            c.write_node_config(n)
            c.start_node(n)
        c.write_admin_config()
        stub = c.stub("coordinator")
        spec = job_toml("restart", names, c.fingerprint, data.columns, rounds=8, min_silos=3, round_timeout_s=60)
        job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=10).job_id
        _wait(stub, job, lambda s: s.current_round >= 3)
        c.kill("aggregator")
        time.sleep(1.0)
        c.start_aggregator()
        stub = c.stub("coordinator")
        status = _wait(stub, job, lambda s: s.status != "running", timeout=180)
        assert status.status == "completed", status.reason
        assert len(status.rounds) == 9 and all(r.status == "closed" for r in status.rounds)
        # the restart happened mid-job: the restarted aggregator reopened the interrupted round
        audit = (c.agg_dir / "state" / "audit.jsonl").read_text()
        assert any('"event":"round_reopened"' in line and job in line for line in audit.splitlines()), (
            "the aggregator was killed after the job had finished"
        )
        finals = [c.nodes[n].dir / "state" / "jobs" / job / "final_model.npz" for n in names]
        deadline = time.time() + 30
        while not all(p.exists() for p in finals) and time.time() < deadline:
            time.sleep(0.2)
        first = np.load(finals[0])
        for other in finals[1:]:
            loaded = np.load(other)
            assert all(np.array_equal(first[k], loaded[k]) for k in first.files)
    finally:
        c.stop_all()
