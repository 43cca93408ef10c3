import filecmp

import numpy as np

from protocol import cipherfed_pb2 as pb
from protocol import codegen
from tests.helpers import HandSilo


def test_generated_stubs_are_in_sync_with_the_proto(tmp_path):
    codegen.generate(tmp_path)
    for name in codegen.GENERATED:
        assert filecmp.cmp(tmp_path / name, codegen.ROOT / "protocol" / name, shallow=False), (
            f"protocol/{name} is stale: run `make protos`"
        )


def _job(c, n_params, name):
    from cipherfed.localconsortium import job_toml

    spec = job_toml(name, ["silo-a", "silo-b"], c.fingerprint, ["x"], rounds=1, round_timeout_s=600)
    return c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id


def test_one_million_parameter_update_streams_under_default_limits(running_aggregator):
    c = running_aggregator
    job = _job(c, 1_000_000, "big1m")
    a, b = HandSilo(c, "silo-a"), HandSilo(c, "silo-b")
    rng = np.random.default_rng(0)
    ua, ub = rng.normal(0, 0.05, 1_000_000), rng.normal(0, 0.05, 1_000_000)
    a.send(*a.build(job, 0, {"w": ua}, 10.0))
    b.send(*b.build(job, 0, {"w": ub}, 30.0))
    header, manifest, chunks = a.download(job, 0)
    assert max(len(ch) for ch in chunks) < 4 * 1024 * 1024 // 16
    mean = a.decrypt(manifest, chunks)
    assert np.abs(mean.tensors["w"] - (ua * 10 + ub * 30) / 40).max() < 1e-6


def test_hundred_million_parameter_update_streams_under_default_limits(running_aggregator):
    """800 MB up per silo and 1.6 GB down in ~64/128 KB messages, with gRPC's default 4 MiB limit.

    The silo side encrypts one chunk and repeats it (identical ciphertexts) so the test measures
    the transport and the aggregator's streaming accumulation, not 100M encryptions."""
    from collections import OrderedDict

    from crypto.engine import encrypt_weighted_update
    from crypto.packing import Layout, Manifest, TensorSpec, chunk_digest
    from protocol.upload import SignedUpload

    c = running_aggregator
    job = _job(c, 100_000_000, "big100m")
    n = 100_000_000
    silos = [HandSilo(c, "silo-a"), HandSilo(c, "silo-b")]
    for i, silo in enumerate(silos):
        one = encrypt_weighted_update(silo.encryptor, OrderedDict(w=np.full(8191, 0.01 * (i + 1))), 1.0)
        count = -(-(n + 1) // 8192)
        chunk = one.chunks[0]
        layout = Layout((TensorSpec("w", (n,), "float64", 0),), n)
        manifest = Manifest("sum", silo.encryptor.fingerprint, layout, n + 1, 8192, 40, (chunk_digest(chunk),) * count)
        header = SignedUpload.sign(silo.key, job, 0, manifest).to_proto()
        receipt = silo.send(header, [chunk] * count)
        assert receipt.chunks == count
    agg_header, agg_manifest, agg_chunks = silos[0].download(job, 0)
    assert agg_manifest.chunk_count == count and agg_header.contributors == 2
    # decrypt the first and the last chunk: each slot holds 0.01 + 0.02
    vec = silos[0].encryptor.decrypt([agg_chunks[0], agg_chunks[-1]], 2 * 8192)
    assert np.abs(vec[:8191] - 0.03).max() < 1e-6 and np.abs(vec[8192 : 8192 + 8191] - 0.03).max() < 1e-6
