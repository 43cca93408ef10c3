"""Known-answer tests: the bytes and hashes of every format that crosses machines or outlives a release.

Each expected value in tests/vectors/formats.json was computed once and frozen. These tests recompute
it from the frozen inputs with today's code; a failure means a format changed. If that was not the
intent, it is a compatibility bug (old silos, old aggregates or old audit logs would stop verifying).
If it was, bump the format's version tag and regenerate (see tests/vectors/generate_formats.py).
"""

import hashlib
import io
import json
import struct
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


# Key export v2 (issue 12): a frozen TEST-ONLY `sum` key set. A silo of one release must open the
# secret export a custodian of another release wrote, and both must name the key by the same fingerprint.

KEY_EXPORT = VECTORS["key_export"]
SECRET_EXPORT = (Path(__file__).parent / "vectors" / KEY_EXPORT["secret_export_file"]).read_bytes()


def _frozen_public_context():
    from crypto.keys import PublicContext
    from crypto.profiles import get_profile

    v = KEY_EXPORT
    return PublicContext(
        get_profile(v["profile"]),
        bytes.fromhex(v["key_id_hex"]),
        v["expected_fingerprint"],
        bytes.fromhex(v["public_parameters_hex"]),
        bytes.fromhex(v["expected_commitment_hex"]),
    )


def _header_json(export: bytes, kind: bytes) -> str:
    assert export[:5] == b"CFKEY" and export[5] == 2 and export[6:7] == kind
    (length,) = struct.unpack(">I", export[7:11])
    return export[11 : 11 + length].decode()


def test_the_frozen_secret_export_file_is_intact():
    assert hashlib.sha256(SECRET_EXPORT).hexdigest() == KEY_EXPORT["secret_export_sha256"]


def test_fingerprint_v2_of_the_frozen_key_set_from_its_inputs():
    from crypto.keys import compute_commitment, compute_fingerprint, load_secret_key_set

    secret_bytes = load_secret_key_set(SECRET_EXPORT).secret_bytes
    assert hashlib.sha256(secret_bytes).hexdigest() == KEY_EXPORT["secret_bytes_sha256"]
    key_id = bytes.fromhex(KEY_EXPORT["key_id_hex"])
    commitment = compute_commitment(key_id, secret_bytes)
    assert commitment.hex() == KEY_EXPORT["expected_commitment_hex"]
    fingerprint = compute_fingerprint(
        KEY_EXPORT["profile"], bytes.fromhex(KEY_EXPORT["public_parameters_hex"]), key_id, commitment
    )
    assert fingerprint == KEY_EXPORT["expected_fingerprint"]


def test_key_export_headers_are_frozen():
    assert _header_json(SECRET_EXPORT, b"S") == KEY_EXPORT["expected_secret_header_json"]
    public_export = bytes.fromhex(KEY_EXPORT["public_export_hex"])
    assert _header_json(public_export, b"P") == KEY_EXPORT["expected_public_header_json"]


def test_todays_encoder_writes_the_frozen_export_bytes():
    from crypto.keys import SecretKeySet, load_secret_key_set

    public = _frozen_public_context()
    assert public.export().hex() == KEY_EXPORT["public_export_hex"]
    secret_bytes = load_secret_key_set(SECRET_EXPORT).secret_bytes
    assert SecretKeySet(public, None, secret_bytes).export_secret() == SECRET_EXPORT


def test_the_frozen_exports_load_under_their_fingerprint_and_round_trip():
    from crypto.keys import load_public_context, load_secret_key_set

    keys = load_secret_key_set(SECRET_EXPORT)
    public = load_public_context(bytes.fromhex(KEY_EXPORT["public_export_hex"]))
    assert keys.fingerprint == public.fingerprint == KEY_EXPORT["expected_fingerprint"]
    assert keys.export_secret() == SECRET_EXPORT
    assert keys.export_public().hex() == KEY_EXPORT["public_export_hex"]


def test_the_frozen_key_still_decrypts_what_it_encrypts_and_derives_the_frozen_tag_key():
    import numpy as np

    from crypto.engine import SumEncryptor, accumulate_batches, decrypt_weighted_mean, encrypt_weighted_update
    from crypto.keys import load_public_context, load_secret_key_set

    encryptor = SumEncryptor(load_secret_key_set(SECRET_EXPORT))
    assert encryptor.tag_key.hex() == KEY_EXPORT["expected_tag_key_hex"]
    public = load_public_context(bytes.fromhex(KEY_EXPORT["public_export_hex"]))
    batch = encrypt_weighted_update(encryptor, {"w": np.arange(6.0).reshape(2, 3) / 10}, 3.0)
    result = decrypt_weighted_mean(
        encryptor, batch.manifest, accumulate_batches(public, public.fingerprint, [batch]).serialize()
    )
    assert np.allclose(result.tensors["w"], np.arange(6.0).reshape(2, 3) / 10) and round(result.total_weight) == 3


# Contributor tags (issue 11): every silo of a job derives the same keyed tag values, whatever its release.


def test_contributor_tag_key_and_values_are_frozen():
    from crypto.contributors import PUBLIC_TAG_KEY, tag_key_from_secret, tag_values

    v = VECTORS["contributor_tags"]
    tag_key = tag_key_from_secret(bytes.fromhex(v["secret_material_hex"]))
    assert tag_key.hex() == v["expected_tag_key_hex"]
    assert [x.hex() for x in tag_values(tag_key, v["job_id"], v["round"], v["lanes"]).tolist()] == v["expected_tau"]
    public = tag_values(PUBLIC_TAG_KEY, v["job_id"], v["round"], v["lanes"]).tolist()
    assert [x.hex() for x in public] == v["expected_public_tau"]
