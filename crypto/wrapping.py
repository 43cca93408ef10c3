"""Wrapping a CKKS secret key export to a member silo's certificate.

ECDH P-256 with an ephemeral key, HKDF-SHA256, AES-256-GCM. The associated data binds the
consortium, the job (or "consortium" for a consortium-wide key), the recipient's name and the
recipient's certificate fingerprint, so a blob cannot be replayed into another context or opened
by another node. The aggregator relays these blobs and cannot open any of them.
"""

from __future__ import annotations

import json
import os
import struct

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto.errors import UnwrapError
from crypto.pki import certificate_fingerprint

_MAGIC = b"CFWRAP1"
_INFO = b"cipherfed key wrap v1"


def _associated_data(consortium: str, job: str, recipient: str, recipient_fingerprint: str) -> bytes:
    return json.dumps(
        {"consortium": consortium, "job": job, "recipient": recipient, "recipient_cert": recipient_fingerprint},
        sort_keys=True,
    ).encode()


def _derive(shared: bytes, ephemeral_public: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_public, info=_INFO).derive(shared)


def wrap_key(
    secret_export: bytes, recipient_cert: x509.Certificate, *, consortium: str, job: str, recipient: str
) -> bytes:
    public_key = recipient_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise UnwrapError("recipient certificate does not hold an EC key")
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    key = _derive(ephemeral.exchange(ec.ECDH(), public_key), ephemeral_public)
    nonce = os.urandom(12)
    ad = _associated_data(consortium, job, recipient, certificate_fingerprint(recipient_cert))
    sealed = AESGCM(key).encrypt(nonce, secret_export, ad)
    return b"".join([_MAGIC, struct.pack(">H", len(ephemeral_public)), ephemeral_public, nonce, sealed])


def unwrap_key(
    blob: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    recipient_cert: x509.Certificate,
    *,
    consortium: str,
    job: str,
    recipient: str,
) -> bytes:
    """Open a blob with the recipient's private key; anything else fails closed with UnwrapError."""
    try:
        if not blob.startswith(_MAGIC):
            raise ValueError("bad magic")
        (n,) = struct.unpack(">H", blob[7:9])
        ephemeral_public = blob[9 : 9 + n]
        nonce = blob[9 + n : 21 + n]
        sealed = blob[21 + n :]
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), ephemeral_public)
        key = _derive(private_key.exchange(ec.ECDH(), peer), ephemeral_public)
        ad = _associated_data(consortium, job, recipient, certificate_fingerprint(recipient_cert))
        return AESGCM(key).decrypt(nonce, sealed, ad)
    except (InvalidTag, ValueError, struct.error) as exc:
        raise UnwrapError(
            f"wrapped key for {recipient!r} (job {job!r}) cannot be opened with this node's key: "
            f"{type(exc).__name__}; it was wrapped to another node, another job, or altered"
        ) from None
