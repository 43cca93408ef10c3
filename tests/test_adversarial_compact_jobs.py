"""Profile ``compact`` in jobs: hostile specs refused with the field named, clip counts audited, and a
member that hides its upload from the contributor tags caught by the encrypted header count.

The fast tests validate job specs and policies directly. The slow ones run a real aggregator and real
silo nodes (separate processes, mTLS over 127.0.0.1, real ciphertexts); the hostile member is driven
by hand with its real certificate and its real (wrapped) compact key.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from crypto.compact import CompactEncryptor
from crypto.keys import load_secret_key_set
from crypto.lanes import max_bits_for
from crypto.signing import sign_digest, update_digest
from crypto.wrapping import unwrap_key
from policies.evaluate import evaluate_site
from policies.schema import ConsortiumPolicy, SitePolicy
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import compact_params, parse_job_spec
from protocol.messages import manifest_to_proto, upload_messages
from protocol.tomlconfig import ConfigError
from tests.helpers import rpc_code, wait_for

FP = "0" * 32
COLUMNS = ["x0", "x1", "x2", "x3"]


def _spec(participants: int = 3, compact: str = "weight_cap = 100", scaling: str = "local", profile: str = "compact"):
    names = [f"silo-{i}" for i in range(participants)]
    return job_toml("j", names, FP, COLUMNS, he_profile=profile, scaling=scaling, compact=compact)


def _problems(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job_spec(text)
    return str(info.value)


# ---------------------------------------------------------------------------------------------- job spec


def test_compact_spec_defaults_fill_in_from_the_participants():
    params = compact_params(parse_job_spec(_spec(participants=16)))
    assert (params.bits, params.bound, params.max_silos, params.weight_cap) == (16, 1.0, 16, 100)
    assert params.layout.lanes_per_real == 2
    assert compact_params(parse_job_spec(_spec(participants=64))).bits == 14


@pytest.mark.parametrize(
    ("participants", "compact", "field"),
    [
        (3, "weight_cap = 100\nbits = 20", "compact.bits / compact.max_silos"),  # 22-bit lanes: one fits
        (20, "weight_cap = 100\nbits = 16", "compact.bits / compact.max_silos"),  # 16 + 5 bits: carries
        (3, "weight_cap = 100\nmax_silos = 2", "compact.max_silos"),  # fewer than the participants
        (3, "weight_cap = 999999999999", "compact.weight_cap"),  # beyond the exact range
    ],
)
def test_spec_whose_lanes_could_carry_is_refused_naming_the_field(participants, compact, field):
    message = _problems(_spec(participants=participants, compact=compact))
    assert field in message
    if "bits" in compact:
        assert "lower bits to at most" in message  # compact_layout's advice on what to change


def test_compact_spec_needs_a_weight_cap_and_local_scaling():
    assert "weight_cap" in _problems(_spec(compact="bits = 12"))
    assert "weight_cap" in _problems(_spec().split("[compact]")[0] + "[model]\n" + _spec().split("[model]")[1])
    assert "dataset.scaling" in _problems(_spec(scaling="federated"))


def test_compact_table_on_another_profile_is_refused():
    assert "only for he_profile" in _problems(_spec(profile="sum"))


def test_policies_rank_compact_with_sum():
    spec = parse_job_spec(_spec())
    site = SitePolicy(kind="site", site="silo-0", trusted_aggregators=["a" * 64], min_he_profile="sum")
    decision = evaluate_site(site, spec, aggregator_fingerprint=None, consortium="C")
    assert [r.passed for r in decision.rules if r.rule == "HE profile"] == [True]
    members = [{"name": "silo-0", "role": "silo", "cert_fingerprint": "b" * 64}]
    assert "compact" in ConsortiumPolicy(kind="consortium", consortium="C", members=members).allowed_he_profiles


# ---------------------------------------------------------------------------------------------- real processes


def _records(node_dir, event):
    path = node_dir / "state" / "audit.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


@pytest.fixture(scope="module")
def consortium(tmp_path_factory):
    """Aggregator and two silo nodes running; silo-3 has certificate and keys but no process (hand-driven)."""
    names = ["silo-1", "silo-2", "silo-3"]
    c = LocalConsortium(tmp_path_factory.mktemp("compact-jobs"), names)
    c.provision()
    c.add_he_key("compact")
    rng = np.random.default_rng(3)
    w = rng.normal(size=len(COLUMNS))
    for name, rows in zip(names, (200, 100, 100), strict=True):
        x = rng.normal(size=(rows, len(COLUMNS)))
        c.write_data(name, x, (x @ w > 0).astype(np.int64), COLUMNS)
    c.write_aggregator_config()
    c.start_aggregator()
    for name in names[:2]:
        c.write_node_config(name)
        c.start_node(name)
    c.write_admin_config()
    try:
        yield c, c.stub("coordinator")
    finally:
        c.stop_all()


@pytest.mark.slow
def test_overflowing_spec_is_refused_at_submit_with_the_field_named(consortium):
    c, stub = consortium
    spec = job_toml(
        "overflow", c.silos, c.fingerprints["compact"], COLUMNS, he_profile="compact", scaling="local",
        compact="weight_cap = 200\nbits = 20",
    )  # fmt: skip
    code, details = rpc_code(lambda: stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30))
    assert code.name == "INVALID_ARGUMENT"
    assert "compact.bits" in details and "carrying" in details


@pytest.mark.slow
def test_compact_job_runs_end_to_end_and_audits_clips_and_the_weight_cap(consortium):
    c, stub = consortium
    # bound 0.02 clips some of a logistic regression's updates at lr 0.5; silo-1 trains on 160 rows > cap 120
    spec = job_toml(
        "compact-e2e", c.silos[:2], c.fingerprints["compact"], COLUMNS, he_profile="compact", scaling="local",
        rounds=2, lr=0.5, compact="weight_cap = 120\nbound = 0.02",
    )  # fmt: skip
    job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    status = wait_for(
        lambda: (s := stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)).status in ("completed", "failed") and s,
        what=f"job {job_id}",
    )
    assert status.status == "completed", status.reason

    def sent_by_both() -> dict[str, list] | None:
        sent = {
            name: [r["details"] for r in _records(c.nodes[name].dir, "update_sent") if r["job"] == job_id]
            for name in c.silos[:2]
        }
        return sent if all(len(details) >= 2 for details in sent.values()) else None

    # A silo records update_sent once its upload call returns; the last upload can complete the job first.
    sent = wait_for(sent_by_both, timeout=30, what="both silos' update_sent records for the two rounds")
    for name, details in sent.items():
        assert len(details) == 2, name
        for d in details:
            assert (d["profile"], d["bits"], d["bound"], d["weight_cap"]) == ("compact", max_bits_for(2), 0.02, 120)
            assert isinstance(d["clipped_values"], int) and d["clipped_values"] >= 0
    assert all(d["weight_capped"] for d in sent["silo-1"]) and not any(d["weight_capped"] for d in sent["silo-2"])
    assert sum(d["clipped_values"] for details in sent.values() for d in details) > 0  # clipping is recorded

    def decrypted_both_rounds() -> list[dict] | None:
        found = [r["details"] for r in _records(c.nodes["silo-1"].dir, "aggregate_decrypted") if r["job"] == job_id]
        return found if len(found) >= 2 else None

    # Likewise the job completes when the last aggregate is released, before the silos have applied it.
    decrypted = wait_for(decrypted_both_rounds, timeout=30, what="silo-1's aggregate_decrypted for both rounds")
    assert [d["verified_contributors"] for d in decrypted] == [2, 2]
    wait_for(
        lambda: all(any(r["job"] == job_id for r in _records(c.nodes[n].dir, "model_exported")) for n in c.silos[:2]),
        timeout=30,
        what="both silos' model_exported records (written once the final model is)",
    )
    models = [
        np.load(c.nodes[n].dir / "state" / "jobs" / job_id / "final_model.npz") for n in c.silos[:2]
    ]  # fmt: skip
    weights = [k for k in models[0].files if not k.startswith("__")]
    assert all(np.array_equal(models[0][k], models[1][k]) for k in weights)


def _hand_encryptor(c: LocalConsortium, name: str, spec_text: str) -> CompactEncryptor:
    node = c.nodes[name]
    fp = c.fingerprints["compact"]
    export = unwrap_key(
        (node.dir / "state" / "keys" / f"{fp}.wrapped").read_bytes(),
        pki.load_private_key(node.key),
        pki.load_certificate(node.cert),
        consortium=c.consortium,
        job="consortium",
        recipient=name,
    )
    return CompactEncryptor(load_secret_key_set(export), compact_params(parse_job_spec(spec_text)))


@pytest.mark.slow
def test_member_hiding_its_upload_from_the_tags_is_caught_by_the_header_count(consortium):
    """silo-3 (a key holder) uploads with its tag lane left at zero: the tags verify 2 contributors while
    3 uploads were summed. Without the header-count comparison the honest silos apply the aggregate."""
    c, stub = consortium
    spec = job_toml(
        "hidden-member", c.silos, c.fingerprints["compact"], COLUMNS, he_profile="compact", scaling="local",
        rounds=1, compact="weight_cap = 200",
    )  # fmt: skip
    encryptor = _hand_encryptor(c, "silo-3", spec)
    job_id = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
    shapes = OrderedDict([("weight", np.zeros((1, len(COLUMNS)))), ("bias", np.zeros(1))])  # the logreg layout
    batch = encryptor.encrypt_update(shapes, 80, tags=np.zeros(len(c.silos)))
    digest = update_digest(job_id, 0, batch.manifest.fingerprint, batch.manifest.digest(), "")
    header = pb.UploadHeader(
        job_id=job_id,
        round=0,
        manifest=manifest_to_proto(batch.manifest),
        audit_head="",
        signature=sign_digest(pki.load_private_key(c.nodes["silo-3"].key), digest),
    )
    c.stub("silo-3").Upload(upload_messages(header, batch.chunks), timeout=120)
    refusals = wait_for(
        lambda: [r for r in _records(c.nodes["silo-1"].dir, "aggregate_refused") if r["job"] == job_id],
        what="silo-1 to refuse the aggregate",
    )
    assert "tags verify 2" in refusals[0]["details"]["reason"]
    assert not [r for r in _records(c.nodes["silo-1"].dir, "aggregate_decrypted") if r["job"] == job_id]
