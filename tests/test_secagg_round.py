"""Secure aggregation with real processes: an aggregator and four silo nodes over mutual TLS.

silo-4 is started with the demo's fault injection: its process stops after mask agreement and before
its upload in round 1. The round still completes from the three survivors' answers (the dropped
silo's pairwise masks are removed with its mask-key shares), and the test checks, exactly, that the
released aggregate is the sum of the survivors' quantized updates: it recovers each survivor's
quantized update from that silo's own disk (its round keys and roster, as only that silo could) and
compares with the aggregate decrypted under the job key.

The collusion test plays the aggregator holding what it saw of one round (each upload, byte for byte:
the digests match its audit log) together with one silo's copy of the compact secret key: decrypting
another silo's upload gives residues that pass a chi-square test of uniformity at the 0.001 level
and are uncorrelated with that silo's true update.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from audit.report import build_report
from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from crypto.compact import CompactEncryptor, CompactParams
from crypto.compact_masked import mask_length_for
from crypto.errors import CiphertextError
from crypto.keys import load_secret_key_set
from crypto.lanes import center
from crypto.secagg.graph import neighbour_graph, round_graph_seed
from crypto.secagg.masking import mask_vector
from crypto.secagg.unmask import mask_correction
from crypto.secagg.wire import decode_keys, decode_material
from crypto.wrapping import unwrap_key
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import compact_params, parse_job_spec, secagg_policy
from protocol.messages import read_aggregate
from protocol.secagg import ATTEMPTS_PER_ROUND, decode_unmasking, session_number
from protocol.upload import SignedUpload
from silo_node.faults import FAULT_EXIT_CODE, FAULT_STOP_AFTER_AGREEMENT
from silo_node.jobfiles import read_upload
from silo_node.secagg_peers import stored_peers
from tests.helpers import aggregator_records, wait_for

SILOS = ["silo-1", "silo-2", "silo-3", "silo-4"]
COLUMNS = [f"x{i}" for i in range(8)]
ALPHA = 0.001  # fixed significance level of the uniformity test


def _records(directory: Path, event: str, job: str | None = None) -> list[dict]:
    path = directory / "state" / "audit.jsonl" if (directory / "state").exists() else directory / "audit.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r["event"] == event and (job is None or r.get("job") == job)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One secure-aggregation job of 3 rounds; silo-4 drops after mask agreement in round 1."""
    c = LocalConsortium(tmp_path_factory.mktemp("secagg-round"), SILOS)
    c.provision()
    fingerprint = c.add_he_key("compact")
    rng = np.random.default_rng(11)
    w = rng.normal(size=len(COLUMNS))
    for name in SILOS:
        x = rng.normal(size=(120, len(COLUMNS)))
        c.write_data(name, x, (x @ w > 0).astype(np.int64), COLUMNS)
    c.write_aggregator_config()
    c.start_aggregator()
    for name in SILOS:
        c.write_node_config(name)
        c.start_node(name, env={FAULT_STOP_AFTER_AGREEMENT: "1"} if name == "silo-4" else None)
    c.write_admin_config()
    spec = job_toml(
        "secagg", SILOS, fingerprint, COLUMNS, he_profile="compact", scaling="local", rounds=3, min_silos=3,
        model='type = "mlp"\nhidden = [16]', round_timeout_s=25, compact="weight_cap = 120",
        secagg="setup_timeout_s = 20\nunmask_timeout_s = 20",
    )  # fmt: skip
    stub = c.stub("coordinator")
    try:
        job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
        dropped = c.processes["silo-4"]
        wait_for(lambda: dropped.poll() is not None, what="silo-4 to stop after mask agreement")
        assert dropped.returncode == FAULT_EXIT_CODE
        c.start_node("silo-4")  # back without the fault: it sits out round 1 and rejoins
        status = wait_for(
            lambda: (s := stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)).status != "running" and s,
            what=f"job {job_id}",
        )
        yield c, job_id, spec, status
    finally:
        c.stop_all()


def _job_key(c: LocalConsortium, name: str, spec_text: str) -> CompactEncryptor:
    """The compact secret key as silo ``name`` holds it: what a colluding silo brings to the aggregator."""
    node = c.nodes[name]
    fp = c.fingerprints["compact"]
    custodian_copy = node.dir / "state" / "keys" / f"{fp}.key"
    if custodian_copy.exists():  # the silo that generated the key keeps its export
        return CompactEncryptor(
            load_secret_key_set(custodian_copy.read_bytes()), compact_params(parse_job_spec(spec_text))
        )
    export = unwrap_key(
        (node.dir / "state" / "keys" / f"{fp}.wrapped").read_bytes(),
        pki.load_private_key(node.key),
        pki.load_certificate(node.cert),
        consortium=c.consortium,
        job="consortium",
        recipient=name,
    )
    return CompactEncryptor(load_secret_key_set(export), compact_params(parse_job_spec(spec_text)))


def _job_dir(c: LocalConsortium, name: str, job_id: str) -> Path:
    return c.nodes[name].dir / "state" / "jobs" / job_id


def _upload(c: LocalConsortium, name: str, job_id: str, round_index: int) -> tuple[SignedUpload, list[bytes]]:
    (cache,) = sorted(_job_dir(c, name, job_id).glob(f"upload-{round_index:05d}-a*.bin"))
    header, chunks = read_upload(cache)
    upload = SignedUpload.from_proto(header)
    attempt = int(cache.stem.rsplit("-a", 1)[1])
    upload_sessions[upload.manifest.digest().hex()] = session_number(round_index, attempt)
    return upload, chunks


def upload_session(upload: SignedUpload) -> int:
    """The session an upload was masked for: the attempt its cache file name records."""
    return upload_sessions[upload.manifest.digest().hex()]


upload_sessions: dict[str, int] = {}


def _raw_residues(key: CompactEncryptor, upload: SignedUpload, chunks: list[bytes]) -> np.ndarray:
    """Decrypt one masked upload into its mask-vector residues in [0, 2^w) (lanes, then weight digits)."""
    return key.decrypt_residues(upload.manifest, chunks)


def _released_correction(c: LocalConsortium, name: str, job_id: str, header, manifest, spec_text: str) -> np.ndarray:
    """What silo ``name`` removes from a released sum: the revealed secrets, checked against its own roster."""
    secrets = decode_unmasking(header.unmasking, len(SILOS)).secrets
    context = secrets.statement.context
    peers = stored_peers(context, (_job_dir(c, name, job_id) / "secagg" / f"session-{context.round:012d}" / "roster.bin").read_bytes())
    spec = parse_job_spec(spec_text)
    graph = neighbour_graph(list(peers.names), round_graph_seed(context), secagg_policy(spec).neighbours)
    params = compact_params(spec)
    return mask_correction(secrets, peers.roster, graph, params.mask_bits, mask_length_for(params, manifest))


def _true_quantized(c: LocalConsortium, name: str, job_id: str, round_index: int, key, upload, chunks) -> np.ndarray:
    """The silo's quantized update, recovered from its own disk: residues minus its own mask."""
    params: CompactParams = key.params
    sessions = sorted((_job_dir(c, name, job_id) / "secagg").glob("session-*"))
    for where in sessions:
        if not (where / "material.bin").exists():
            continue
        material = decode_material((where / "material.bin").read_bytes())
        context = material.context
        if context.round // ATTEMPTS_PER_ROUND != round_index or context.round != upload_session(upload):
            continue
        keys = decode_keys((where / "keys.bin").read_bytes())
        peers = stored_peers(context, (where / "roster.bin").read_bytes())
        me = pki.certificate_fingerprint(pki.load_certificate(c.nodes[name].cert))
        residues = _raw_residues(key, upload, chunks)
        zeros = np.zeros(residues.shape[0], dtype=np.uint64)
        mask = mask_vector(zeros, params.mask_bits, context, keys, me, peers.roster, material.mask_set,
                           material.threshold)  # fmt: skip
        return center((residues - mask) & np.uint64((1 << params.mask_bits) - 1), params.mask_bits)
    raise AssertionError(f"{name} kept no session for round {round_index}")


@pytest.mark.slow
def test_round_with_a_dropout_completes_and_releases_the_exact_sum_of_the_survivors(run):
    c, job_id, spec, status = run
    assert status.status == "completed", status.reason
    assert [r.status for r in status.rounds] == ["closed"] * 3
    unmasked = aggregator_records(c, "secagg_unmasked", job_id)
    assert [r["round"] for r in unmasked] == [0, 1, 2]
    assert unmasked[1]["details"]["dropped"] == ["silo-4"]
    assert sorted(status.rounds[1].contributors) == ["silo-1", "silo-2", "silo-3"]
    # exact: the aggregate of round 1 decrypts to the sum of the three survivors' quantized updates
    key = _job_key(c, "silo-1", spec)
    truth = sum(
        _true_quantized(c, n, job_id, 1, key, *_upload(c, n, job_id, 1)) for n in ("silo-1", "silo-2", "silo-3")
    )
    header, manifest, chunks = read_aggregate(
        c.stub("silo-1").DownloadAggregate(pb.AggregateRequest(job_id=job_id, round=1), timeout=60)
    )
    with pytest.raises(CiphertextError, match="without the secrets"):  # the released sum is still masked
        key.decrypt_lane_sums(manifest, chunks)
    sums = key.decrypt_lane_sums(manifest, chunks, _released_correction(c, "silo-1", job_id, header, manifest, spec))
    assert sums.contributors == 3
    assert np.array_equal(sums.values, truth[: sums.values.shape[0]])
    bits = key.params.bits
    digits = truth[sums.values.shape[0] :]
    assert sums.total_weight == int(digits[0]) + (int(digits[1]) << bits)  # weights summed exactly too
    # the compliance report shows who revealed what: the survivors gave silo-4's mask-key shares in round 1
    logs = [c.agg_dir / "state" / "audit.jsonl", *(c.nodes[n].dir / "state" / "audit.jsonl" for n in SILOS)]
    html, verification = build_report(logs)
    assert verification.ok, verification.problems[:3]
    section = html.split("9. Secure aggregation")[1].split("<h2>")[0]
    assert section.count("mask-key shares of silo-4") == 3 and "nobody (no silo dropped)" in section
    # every silo, the restarted one too, holds the same model
    paths = [_job_dir(c, n, job_id) / "final_model.npz" for n in SILOS]
    wait_for(lambda: all(p.exists() for p in paths), 60, "every silo to export the model")  # after its next poll
    models = [np.load(p) for p in paths]
    weights = [k for k in models[0].files if not k.startswith("__")]
    assert all(np.array_equal(models[0][k], m[k]) for m in models[1:] for k in weights)


@pytest.mark.slow
def test_aggregator_with_one_colluding_silo_reads_noise_from_another_silos_upload(run):
    c, job_id, spec, _ = run
    key = _job_key(c, "silo-3", spec)  # silo-3 colludes: it hands the aggregator its copy of the job key
    upload, chunks = _upload(c, "silo-2", job_id, 0)
    accepted = aggregator_records(c, "upload_accepted", job_id)
    assert upload.manifest.digest().hex() in {r["details"]["digest"] for r in accepted if r["actor"] == "silo-2"}
    residues = _raw_residues(key, upload, chunks).astype(np.float64)
    w = key.params.mask_bits
    counts, _ = np.histogram(residues, bins=16, range=(0, 2.0**w))
    assert stats.chisquare(counts).pvalue > ALPHA, counts  # indistinguishable from uniform at the 0.001 level
    truth = _true_quantized(c, "silo-2", job_id, 0, key, upload, chunks)
    seen = center(residues.astype(np.uint64), w)
    assert np.abs(truth).max() > 0
    assert abs(stats.pearsonr(seen, truth).statistic) < 0.3  # and unrelated to the true update
