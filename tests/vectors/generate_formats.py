"""Regenerate tests/vectors/formats.json — ONLY when a format change is intended.

Every format in that file crosses machines or outlives a release (a silo and an aggregator of
different versions, an audit log reviewed years later). `tests/test_format_vectors.py` recomputes
each expected value from the frozen inputs and fails when the code's answer changes. If you change a
format on purpose, bump its version tag in the code, run this script
(`python -m tests.vectors.generate_formats --regenerate NAME`), and say so in the commit message.

Without arguments the script only ADDS entries that the file lacks; it never rewrites an existing
one (several inputs are random: a CA, an ECIES ephemeral key, an HE key set, so a rewrite would
change bytes that old releases produced). ``--regenerate NAME`` rewrites that one entry.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from audit.records import record_hash, sign_record
from crypto import pki
from crypto.contributors import PUBLIC_TAG_KEY, tag_key_from_secret, tag_values
from crypto.engine import SumEncryptor
from crypto.keys import generate_key_set
from crypto.packing import Layout, Manifest, TensorSpec
from crypto.signing import update_digest
from crypto.wrapping import wrap_key
from protocol.framing import frame

OUT = Path(__file__).with_name("formats.json")
KEY_EXPORT_SECRET_FILE = "key_export_sum_secret.TEST-ONLY.bin"  # a frozen test key set; never use it for data


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


def _export_header_json(export: bytes) -> str:
    """The header JSON of a key export: after magic (5), version (1), kind (1) and its length (4)."""
    (length,) = struct.unpack(">I", export[7:11])
    return export[11 : 11 + length].decode()


def build_key_export() -> dict[str, object]:
    """A real ``sum`` key set, frozen: its secret export (a side file: 115 KB) and public export, the
    header JSON of each, and the fingerprint v2 inputs and result (issue 12, known-answer vectors)."""
    keys = generate_key_set("sum")
    secret_export = keys.export_secret()
    public_export = keys.export_public()
    OUT.with_name(KEY_EXPORT_SECRET_FILE).write_bytes(secret_export)
    return {
        "_about": "cipherfed key export v2 (magic CFKEY, version 2, kind S/P, u32 header length, sorted JSON "
        "header, parts) of a frozen TEST-ONLY key set; fingerprint v2 = framed SHA-256 over domain, profile, "
        "public parameters, key id and the commitment to the secret bytes.",
        "profile": keys.profile.name,
        "key_id_hex": keys.public.key_id.hex(),
        "public_parameters_hex": keys.public.parameters.hex(),
        "secret_bytes_sha256": hashlib.sha256(keys.secret_bytes).hexdigest(),
        "secret_export_file": KEY_EXPORT_SECRET_FILE,
        "secret_export_sha256": hashlib.sha256(secret_export).hexdigest(),
        "public_export_hex": public_export.hex(),
        "expected_secret_header_json": _export_header_json(secret_export),
        "expected_public_header_json": _export_header_json(public_export),
        "expected_commitment_hex": keys.public.commitment.hex(),
        "expected_fingerprint": keys.fingerprint,
        "expected_tag_key_hex": SumEncryptor(keys).tag_key.hex(),
    }


def build_contributor_tags() -> dict[str, object]:
    """Keyed contributor tags (issue 11): every silo of a job must derive the same tag key and tau values."""
    secret = b"frozen secret key serialization"
    tag_key = tag_key_from_secret(secret)
    job, round_index, lanes = "study-abc123", 7, 5
    return {
        "secret_material_hex": secret.hex(),
        "job_id": job,
        "round": round_index,
        "lanes": lanes,
        "expected_tag_key_hex": tag_key.hex(),
        "expected_tau": [v.hex() for v in tag_values(tag_key, job, round_index, lanes).tolist()],
        "expected_public_tau": [v.hex() for v in tag_values(PUBLIC_TAG_KEY, job, round_index, lanes).tolist()],
    }


# Entries added after the file was first written; each is generated alone, only when asked or missing.
BUILDERS: dict[str, Callable[[], dict[str, object]]] = {
    "key_export": build_key_export,
    "contributor_tags": build_contributor_tags,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate", action="append", default=[], choices=sorted(BUILDERS), metavar="NAME")
    args = parser.parse_args(argv)
    current: dict[str, object] = json.loads(OUT.read_text()) if OUT.exists() else build()
    changed = []
    for name, builder in BUILDERS.items():
        if name not in current or name in args.regenerate:
            current[name] = builder()
            changed.append(name)
    OUT.write_text(json.dumps(current, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {', '.join(changed) or 'nothing new'}")


if __name__ == "__main__":
    main()
