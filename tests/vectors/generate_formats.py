"""Regenerate tests/vectors/formats.json — ONLY when a format change is intended.

Every format in that file crosses machines or outlives a release (a silo and an aggregator of
different versions, an audit log reviewed years later). `tests/test_format_vectors.py` recomputes
each expected value from the frozen inputs and fails when the code's answer changes. If you change a
format on purpose, bump its version tag in the code, run this script
(`python -m tests.vectors.generate_formats`), and say so in the commit message.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from audit.records import record_hash, sign_record
from crypto import pki
from crypto.packing import Layout, Manifest, TensorSpec
from crypto.signing import update_digest
from crypto.wrapping import wrap_key
from protocol.framing import frame

OUT = Path(__file__).with_name("formats.json")


def build() -> dict[str, object]:
    layout = Layout((TensorSpec("w", (2, 3), "float32", 0, "numpy"), TensorSpec("b", (3,), "float64", 6, "torch")), 9)
    manifest_inputs = {
        "profile": "sum",
        "fingerprint": "0123456789abcdef0123456789abcdef",
        "layout_json": layout.to_json(),
        "value_count": 10,  # the layout's 9 values and the appended weight
        "values_per_chunk": 8192,
        "scale_bits": 40,
        "chunk_digests": ["11" * 32],
    }
    manifest = Manifest(
        "sum",
        manifest_inputs["fingerprint"],  # type: ignore[arg-type]
        layout,
        10,
        8192,
        40,
        (bytes.fromhex("11" * 32),),
    )
    update_inputs = {
        "job_id": "study-abc123",
        "round": 7,
        "fingerprint": "0123456789abcdef0123456789abcdef",
        "manifest_digest": "22" * 32,
        "audit_head": "33" * 32,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki.init_ca(root / "ca", "vectors")
        cert_path, key_path = pki.issue(root / "ca", "silo-a", "silo", root, days=36500)
        key_pem = key_path.read_bytes().decode()
        cert_pem = cert_path.read_bytes().decode()
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    cert = pki.x509.load_pem_x509_certificate(cert_pem.encode())
    secret = b"frozen secret export bytes"
    blob = wrap_key(secret, cert, consortium="vectors", job="consortium", recipient="silo-a")
    record = {
        "seq": 3,
        "ts": "2026-11-22T17:00:00.000000Z",
        "actor": "silo-a",
        "event": "update_sent",
        "details": {"job": "study-abc123", "round": 7, "bytes": 81920, "note": "ünïcode"},
        "prev": "44" * 32,
    }
    signed = dict(record)
    sign_record(signed, key)  # type: ignore[arg-type]
    frames = [b"", b"header", bytes(range(5))]
    return {
        "_about": "Frozen format vectors; see tests/vectors/generate_formats.py before changing anything here.",
        "manifest_digest": {"inputs": manifest_inputs, "expected": manifest.digest().hex()},
        "update_digest": {
            "inputs": update_inputs,
            "expected": update_digest(
                "study-abc123", 7, update_inputs["fingerprint"], bytes.fromhex("22" * 32), "33" * 32
            ).hex(),
        },
        "wrapped_key": {
            "recipient_key_pem": key_pem,
            "recipient_cert_pem": cert_pem,
            "consortium": "vectors",
            "job": "consortium",
            "recipient": "silo-a",
            "blob_hex": blob.hex(),
            "expected_secret_hex": secret.hex(),
        },
        "audit_record": {
            "record": record,
            "expected_hash": record_hash(record),
            "signer_cert_pem": cert_pem,
            "signature": signed["sig"],
        },
        "framing": {"frames_hex": [f.hex() for f in frames], "expected_hex": b"".join(frame(f) for f in frames).hex()},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")
