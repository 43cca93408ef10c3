"""Signed upload digests: what a silo vouches for when it sends an update.

The digest binds job, round, key fingerprint, the manifest (which lists every chunk's hash) and
the silo's current audit head, so an upload cannot be moved to another round, another job or
another key, and the aggregator can anchor the silo's audit log.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.errors import SignatureError


def update_digest(
    job_id: str, round_index: int, fingerprint: str, manifest_digest: bytes, audit_head: str = ""
) -> bytes:
    h = hashlib.sha256()
    for part in (
        b"cipherfed-upload-v1",
        job_id.encode(),
        struct.pack(">q", round_index),
        fingerprint.encode(),
        manifest_digest,
        audit_head.encode(),
    ):
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


def sign_digest(private_key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    return private_key.sign(digest, ec.ECDSA(hashes.SHA256()))


def verify_digest(cert: x509.Certificate, digest: bytes, signature: bytes) -> None:
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SignatureError("signer certificate does not hold an EC key")
    try:
        public_key.verify(signature, digest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("signature does not verify against the sender's certificate") from None
