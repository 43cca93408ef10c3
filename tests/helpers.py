"""Test-side helpers: a hand-driven silo that builds real signed, encrypted uploads."""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from crypto import pki
from crypto.engine import SumEncryptor, decrypt_weighted_mean, encrypt_weighted_update
from crypto.keys import load_secret_key_set
from crypto.wrapping import unwrap_key
from protocol import cipherfed_pb2 as pb
from protocol import cipherfed_pb2_grpc as pbg
from protocol.messages import read_aggregate, upload_messages
from protocol.upload import SignedUpload

# What `cipherfed demo --json` must always write (issue #3), whichever partition ran.
DEMO_JSON_KEYS = (
    "partition",
    "dataset",
    "silos",
    "rounds",
    "final",
    "centralized",
    "plaintext_federated",
    "upload_bytes_total",
    "wall_s",
)


def silo_encryptor(consortium, name: str) -> SumEncryptor:
    node = consortium.nodes[name]
    secret = node.dir / "he_secret.key"
    if secret.exists():
        return SumEncryptor(load_secret_key_set(secret.read_bytes()))
    blob = (node.dir / "he_key.wrapped").read_bytes()
    export = unwrap_key(
        blob,
        pki.load_private_key(node.key),
        pki.load_certificate(node.cert),
        consortium=consortium.consortium,
        job="consortium",
        recipient=name,
    )
    return SumEncryptor(load_secret_key_set(export))


def party_credentials(consortium, name: str = "imaging"):
    """What the node daemon hands a vertical party: its certificate key and the consortium's anchors."""
    from crypto.endorsement import TrustAnchors
    from silo_node.vertical import PartyCredentials

    node = consortium.nodes[name]
    ca = pki.load_certificate(consortium.ca_dir / "ca.crt")
    trust = TrustAnchors(ca, pki.RevocationList(consortium.ca_dir / "crl.pem", ca))
    return PartyCredentials(
        consortium.consortium, pki.load_private_key(node.key), pki.load_certificate(node.cert), trust
    )


class HandSilo:
    def __init__(self, consortium, name: str) -> None:
        self.consortium = consortium
        self.name = name
        self.key = pki.load_private_key(consortium.nodes[name].key)
        self.stub = consortium.stub(name)
        self.encryptor = silo_encryptor(consortium, name)

    def build(self, job_id: str, round_index: int, tensors: dict, weight: float, signer=None, audit_head: str = ""):
        batch = encrypt_weighted_update(self.encryptor, OrderedDict(tensors), weight)
        upload = SignedUpload.sign(signer or self.key, job_id, round_index, batch.manifest, audit_head)
        return upload.to_proto(), batch.chunks

    def send(self, header, chunks):
        return self.stub.Upload(upload_messages(header, chunks), timeout=120)

    def download(self, job_id: str, round_index: int):
        return read_aggregate(
            self.stub.DownloadAggregate(pb.AggregateRequest(job_id=job_id, round=round_index), timeout=300)
        )

    def decrypt(self, manifest, chunks):
        return decrypt_weighted_mean(self.encryptor, manifest, chunks)


def rpc_code(fn) -> tuple[grpc.StatusCode, str]:
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the RPC succeeded but should have been refused")


def breast_cancer_parts(silos: int):
    from cipherfed.demo import load_dataset, non_iid_split

    data = load_dataset("breast_cancer", None)
    return data, non_iid_split(data.y_train, silos)


def stub_for(tls_ca: Path, cert: Path | None, key: Path | None, port: int):
    from protocol.channel import consortium_stub

    creds = grpc.ssl_channel_credentials(
        root_certificates=tls_ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    channel = grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])
    return consortium_stub(channel)


def tiny_update(seed: int, shape=(40,)):
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(0, 0.05, shape), "b": rng.normal(0, 0.05, 3)}


def serve_as_aggregator(consortium, servicer, workers: int = 8) -> grpc.Server:
    """Play a malicious aggregator: a real gRPC server with the consortium's real aggregator certificate
    (mutual TLS, as a node checks it) serving ``servicer``; sets ``consortium.port``. The caller stops it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    pbg.add_ConsortiumServicer_to_server(servicer, server)
    agg = consortium.agg_dir
    credentials = grpc.ssl_server_credentials(
        [((agg / "aggregator.key").read_bytes(), (agg / "aggregator.crt").read_bytes())],
        root_certificates=(consortium.ca_dir / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    consortium.port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server


def aggregator_records(consortium, event: str, job: str) -> list[dict]:
    """The aggregator's audit records of one event of one job, in log order."""
    path = consortium.agg_dir / "state" / "audit.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in rows if r["event"] == event and r.get("job") == job]


def wait_for(predicate, timeout: float = 240.0, what: str = "condition"):
    """Poll ``predicate`` every 0.3 s until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")
