"""The audit record: canonical encoding, hash and signature.

A record's hash is SHA-256 over the canonical JSON of every field but ``hash`` and ``sig`` (sorted
keys, no whitespace, UTF-8), and it includes the previous record's hash, so changing, removing or
reordering any record breaks every hash after it. The signature is ECDSA P-256 over that hash with
the key of the party that keeps the log.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

GENESIS_PREV = "0" * 64
UNSIGNED_FIELDS = ("hash", "sig")


def canonical(record: dict[str, Any]) -> bytes:
    body = {k: v for k, v in record.items() if k not in UNSIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def sign_record(record: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> None:
    record["hash"] = record_hash(record)
    record["sig"] = base64.b64encode(key.sign(bytes.fromhex(record["hash"]), ec.ECDSA(hashes.SHA256()))).decode()


def signature_valid(record: dict[str, Any], cert: x509.Certificate) -> bool:
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    try:
        public_key.verify(
            base64.b64decode(record.get("sig", "")), bytes.fromhex(record.get("hash", "")), ec.ECDSA(hashes.SHA256())
        )
        return True
    except (InvalidSignature, ValueError):
        return False
