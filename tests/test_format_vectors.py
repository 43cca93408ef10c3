"""Known-answer tests: the bytes and hashes of every format that crosses machines or outlives a release.

Each expected value in tests/vectors/formats.json was computed once and frozen. These tests recompute
it from the frozen inputs with today's code; a failure means a format changed. If that was not the
intent, it is a compatibility bug (old silos, old aggregates or old audit logs would stop verifying).
If it was, bump the format's version tag and regenerate (see tests/vectors/generate_formats.py).
"""

import io
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from audit.records import record_hash, signature_valid
from crypto.errors import UnwrapError
from crypto.packing import Layout, Manifest
from crypto.signing import update_digest
from crypto.wrapping import unwrap_key
from protocol.framing import frame, read_frames

VECTORS = json.loads((Path(__file__).parent / "vectors" / "formats.json").read_text())


def test_manifest_digest_is_frozen():
    v = VECTORS["manifest_digest"]["inputs"]
    manifest = Manifest(
        v["profile"],
        v["fingerprint"],
        Layout.from_json(v["layout_json"]),
        v["value_count"],
        v["values_per_chunk"],
        v["scale_bits"],
        tuple(bytes.fromhex(d) for d in v["chunk_digests"]),
    )
    manifest.check_consistent()
    assert manifest.digest().hex() == VECTORS["manifest_digest"]["expected"]


def test_update_digest_is_frozen():
    v = VECTORS["update_digest"]["inputs"]
    digest = update_digest(
        v["job_id"], v["round"], v["fingerprint"], bytes.fromhex(v["manifest_digest"]), v["audit_head"]
    )
    assert digest.hex() == VECTORS["update_digest"]["expected"]


def _wrapped():
    v = VECTORS["wrapped_key"]
    key = serialization.load_pem_private_key(v["recipient_key_pem"].encode(), None)
    cert = x509.load_pem_x509_certificate(v["recipient_cert_pem"].encode())
    return v, key, cert


def test_a_frozen_wrapped_key_blob_still_opens_to_its_secret():
    v, key, cert = _wrapped()
    secret = unwrap_key(
        bytes.fromhex(v["blob_hex"]), key, cert, consortium=v["consortium"], job=v["job"], recipient=v["recipient"]
    )
    assert secret.hex() == v["expected_secret_hex"]


@pytest.mark.parametrize("field", ["consortium", "job", "recipient"])
def test_the_frozen_blob_is_bound_to_its_context(field):
    v, key, cert = _wrapped()
    context = {"consortium": v["consortium"], "job": v["job"], "recipient": v["recipient"], field: "other"}
    with pytest.raises(UnwrapError):
        unwrap_key(bytes.fromhex(v["blob_hex"]), key, cert, **context)


def test_audit_record_hash_and_signature_are_frozen():
    v = VECTORS["audit_record"]
    record = dict(v["record"])
    assert record_hash(record) == v["expected_hash"]
    cert = x509.load_pem_x509_certificate(v["signer_cert_pem"].encode())
    assert signature_valid({**record, "hash": v["expected_hash"], "sig": v["signature"]}, cert)
    tampered = {**record, "details": {**record["details"], "bytes": 1}}
    assert record_hash(tampered) != v["expected_hash"]


def test_frame_encoding_is_frozen():
    v = VECTORS["framing"]
    frames = [bytes.fromhex(f) for f in v["frames_hex"]]
    encoded = b"".join(frame(f) for f in frames)
    assert encoded.hex() == v["expected_hex"]
    assert list(read_frames(io.BytesIO(encoded))) == frames
