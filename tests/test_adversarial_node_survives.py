"""One hostile job spec must never kill a silo node process (adversarial review of issue 11).

A coordinator can submit a DP job whose epsilon the accountant cannot reach (``epsilon = 0.001``
validates); an aggregator can offer a node a vertical job that does not name it. Either used to
raise out of the node's run loop, so every participating node exited, and was re-offered the same
job (and died again) after a restart. Real node processes, a real aggregator (or a hostile gRPC
server with the consortium's aggregator certificate) over mTLS on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cipherfed.localconsortium import LocalConsortium, job_toml
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import parse_job_spec
from silo_node.privacy_ledger import PrivacyLedger
from tests.helpers import serve_as_aggregator
from tests.test_adversarial_validation import HostileAggregator

COLUMNS = ["a", "b", "c"]


def _audit(path: Path, event: str, job: str | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r["event"] == event and (job is None or r.get("job") == job)]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_unreachable_epsilon_is_declined_and_the_nodes_run_the_next_job(tmp_path):
    silos = ["s1", "s2"]
    c = LocalConsortium(tmp_path / "c", silos)
    c.provision()
    rng = np.random.default_rng(0)
    for s in silos:
        x = rng.normal(size=(60, 3))
        c.write_data(s, x, (x[:, 0] > 0).astype(int), COLUMNS)
    stub = c.start_all()
    try:
        c.wait_healthy()
        tiny = job_toml(
            "tiny",
            silos,
            c.fingerprint,
            COLUMNS,
            rounds=2,
            scaling="local",
            extra="[dp]\nepsilon = 0.001\ndelta = 1e-5\n",
        )
        job = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=tiny), timeout=30).job_id
        logs = {s: c.nodes[s].dir / "state" / "audit.jsonl" for s in silos}
        _wait(
            lambda: (
                all(_audit(logs[s], "job_declined", job) for s in silos)
                or any(c.processes[s].poll() is not None for s in silos)
            ),
            90,
            "both nodes to decline the job",
        )
        for s in silos:
            assert c.processes[s].poll() is None, (c.logs / f"{s}.log").read_text()[-3000:]
            (declined,) = _audit(logs[s], "job_declined", job)
            assert "dp.epsilon: 0.001 is too small for this dataset" in declined["details"]["reasons"][0]
            assert "resubmit with a larger epsilon" in declined["details"]["reasons"][0]
            ledger = PrivacyLedger(c.nodes[s].dir / "state" / "privacy.sqlite")
            assert ledger.reservation(str(c.nodes[s].data.resolve()), job) is None  # no budget burnt
            ledger.close()
        # the same nodes, still polling, run an honest job to the end
        honest = stub.SubmitJob(
            pb.SubmitJobRequest(spec_toml=job_toml("honest", silos, c.fingerprint, COLUMNS, rounds=1)), timeout=30
        ).job_id
        deadline = time.time() + 120
        while (status := stub.GetJobStatus(pb.JobRef(job_id=honest), timeout=10)).status == "running":
            assert time.time() < deadline, "honest job still running"
            assert all(c.processes[s].poll() is None for s in silos)
            time.sleep(0.5)
        assert status.status == "completed", status
    finally:
        c.stop_all()


@pytest.mark.slow
def test_vertical_job_not_naming_the_node_is_declined_and_the_node_keeps_polling(tmp_path):
    c = LocalConsortium(tmp_path / "c", ["p1", "p2"])
    c.provision(he_keys=False)
    node = c.nodes["p1"]
    node.data.write_text("pid,x1,label\n" + "".join(f"id{i},{i / 10},{i % 2}\n" for i in range(30)))
    not_mine = parse_job_spec(
        'name = "v"\npartition = "vertical"\nrounds = 1\nhe_profile = "vertical"\nparticipants = ["p3", "p2"]\n'
        '[dataset]\nlabel = "label"\nid = "pid"\n[vertical]\nactive = "p3"\npassive = ["p2"]\n'
        '[vertical.features]\np3 = ["x1"]\np2 = ["x2"]\n'
    ).model_dump_json()
    tasks = [pb.Task(job_id="not-mine-v", spec_json=not_mine, job_status="running")]
    hostile = HostileAggregator(tasks)
    server = serve_as_aggregator(c, hostile, 8)
    try:
        c.write_node_config("p1", keys='scope = "consortium"')
        proc = c.start_node("p1")
        _wait(lambda: "not-mine-v" in hostile.declines or proc.poll() is not None, 60, "the decline")
        polls = hostile.polls
        time.sleep(1.5)
        assert proc.poll() is None, (c.logs / "p1.log").read_text()[-3000:]
        assert hostile.polls > polls  # still polling, and the declined offer is not retried
        assert "lists [p3, p2], not this node (p1)" in hostile.declines["not-mine-v"][0]
        log = node.dir / "state" / "audit.jsonl"
        assert len(_audit(log, "job_declined", "not-mine-v")) == 1
        assert not _audit(log, "dataset_used")
    finally:
        c.stop_all()
        server.stop(0)
