"""Custodian endorsements: the key custodian's signature over an HE key set and who received it.

The aggregator relays key material and may lie about it (mint a key of its own, swap blobs, replay
another key's material). A silo therefore uses a key only if the custodian's certificate (a current
silo of the consortium, allowed by the site policy) signed a statement binding:

- the consortium and the scope the key was made for,
- the key fingerprint (v2: commits to the key material, see ``crypto.keys``) and its profile,
- the SHA-256 of the public context export the aggregator was given,
- every recipient: name, certificate fingerprint and serial, and the SHA-256 of the blob wrapped
  to it (the serial lets any silo check the recipients against the CRL: rotation on revocation),
- the custodian's own certificate fingerprint.

The signed bytes (``Endorsement.statement``) are a frozen, length-prefixed encoding (known-answer
vectors in ``tests/vectors/key_fingerprint_endorsement_v2.json``); the transport form (``encode``) is JSON and
is never signed itself, so JSON canonicalisation does not matter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from crypto import pki
from crypto.errors import KeyMaterialError, PKIError

DOMAIN = b"cipherfed-key-endorsement-v1"
MAX_RECIPIENTS = 1000
MAX_ENCODED_BYTES = 512 * 1024  # an endorsement for MAX_RECIPIENTS members is about 250 KB
MAX_CERT_PEM_BYTES = 16 * 1024
SAFE_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
RECREATE = "ask the key custodian to re-run `cipherfed keys create` with the current member certificates"


class EndorsementError(KeyMaterialError):
    """Key material without a valid custodian endorsement: the node must not use it."""


def validate_scope(scope: str) -> str:
    """Key scopes name files and database rows: a safe identifier, nothing else."""
    if not SAFE_SCOPE.match(scope or ""):
        raise EndorsementError(
            f"key scope {scope[:80]!r} is not a safe identifier (letters, digits, '.', '_', '-'; at most 128; "
            "must not start with a punctuation mark)"
        )
    return scope


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Recipient:
    name: str
    cert_fingerprint: str  # SHA-256 of the recipient certificate (DER), hex
    cert_serial: int
    blob_sha256: str  # SHA-256 of the blob wrapped to this recipient, hex


@dataclass(frozen=True)
class Endorsement:
    consortium: str
    scope: str
    fingerprint: str
    profile: str
    public_context_sha256: str
    recipients: tuple[Recipient, ...]
    custodian_cert_fingerprint: str
    signature: bytes = field(default=b"", repr=False)

    def statement(self) -> bytes:
        """The frozen bytes the custodian signs (frame: 4-byte big-endian length, then the bytes)."""
        parts: list[bytes] = [
            DOMAIN,
            self.consortium.encode(),
            self.scope.encode(),
            self.fingerprint.encode(),
            self.profile.encode(),
            bytes.fromhex(self.public_context_sha256),
            bytes.fromhex(self.custodian_cert_fingerprint),
            struct.pack(">I", len(self.recipients)),
        ]
        for r in sorted(self.recipients, key=lambda r: r.name):
            parts += [
                r.name.encode(),
                bytes.fromhex(r.cert_fingerprint),
                format(r.cert_serial, "x").encode(),
                bytes.fromhex(r.blob_sha256),
            ]
        return b"".join(struct.pack(">I", len(p)) + p for p in parts)

    def recipient(self, name: str) -> Recipient | None:
        return next((r for r in self.recipients if r.name == name), None)

    def encode(self) -> bytes:
        body = {
            "version": 1,
            "consortium": self.consortium,
            "scope": self.scope,
            "fingerprint": self.fingerprint,
            "profile": self.profile,
            "public_context_sha256": self.public_context_sha256,
            "custodian_cert_fingerprint": self.custodian_cert_fingerprint,
            "recipients": [
                {
                    "name": r.name,
                    "cert": r.cert_fingerprint,
                    "serial": format(r.cert_serial, "x"),
                    "blob": r.blob_sha256,
                }
                for r in sorted(self.recipients, key=lambda r: r.name)
            ],
            "signature": base64.b64encode(self.signature).decode(),
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Endorsement:
        """Parse (bounded, every field checked); the signature is checked by ``verify_endorsement``."""
        if not data:
            raise EndorsementError(f"the key comes with no custodian endorsement; {RECREATE}")
        if len(data) > MAX_ENCODED_BYTES:
            raise EndorsementError(f"custodian endorsement is {len(data)} bytes (limit {MAX_ENCODED_BYTES})")
        try:
            body = json.loads(data)
            if body.get("version") != 1:
                raise ValueError(f"unknown version {body.get('version')!r}")
            raw = body["recipients"]
            if not isinstance(raw, list) or len(raw) > MAX_RECIPIENTS:
                raise ValueError(f"recipients must be a list of at most {MAX_RECIPIENTS}")
            recipients = tuple(
                Recipient(_text(r["name"]), _hex64(r["cert"]), int(str(r["serial"]), 16), _hex64(r["blob"]))
                for r in raw
            )
            endorsement = cls(
                consortium=_text(body["consortium"]),
                scope=validate_scope(_text(body["scope"])),
                fingerprint=_hex32(body["fingerprint"]),
                profile=_text(body["profile"]),
                public_context_sha256=_hex64(body["public_context_sha256"]),
                recipients=recipients,
                custodian_cert_fingerprint=_hex64(body["custodian_cert_fingerprint"]),
                signature=base64.b64decode(str(body["signature"]), validate=True),
            )
        except EndorsementError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise EndorsementError(f"custodian endorsement is malformed ({exc}); {RECREATE}") from None
        if len({r.name for r in recipients}) != len(recipients):
            raise EndorsementError("custodian endorsement lists a recipient twice")
        return endorsement


def _text(value: object, limit: int = 256) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ValueError(f"expected a non-empty string of at most {limit} characters, got {str(value)[:40]!r}")
    return value


def _hex64(value: object) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise ValueError("expected 64 lowercase hex digits")
    return value


def _hex32(value: object) -> str:
    if not isinstance(value, str) or not _HEX32.match(value):
        raise ValueError("expected a 32-hex-digit key fingerprint")
    return value


def endorse(
    private_key: ec.EllipticCurvePrivateKey,
    custodian_cert: x509.Certificate,
    *,
    consortium: str,
    scope: str,
    fingerprint: str,
    profile: str,
    public_export: bytes,
    wrapped: dict[str, tuple[x509.Certificate, bytes]],
) -> Endorsement:
    """The custodian's signed statement over a key set and the blobs it wrapped (name -> (cert, blob))."""
    unsigned = Endorsement(
        consortium=consortium,
        scope=validate_scope(scope),
        fingerprint=fingerprint,
        profile=profile,
        public_context_sha256=sha256_hex(public_export),
        recipients=tuple(
            Recipient(name, pki.certificate_fingerprint(cert), cert.serial_number, sha256_hex(blob))
            for name, (cert, blob) in sorted(wrapped.items())
        ),
        custodian_cert_fingerprint=pki.certificate_fingerprint(custodian_cert),
    )
    signature = private_key.sign(unsigned.statement(), ec.ECDSA(hashes.SHA256()))
    return Endorsement(**{**unsigned.__dict__, "signature": signature})


@dataclass(frozen=True)
class TrustAnchors:
    """What a silo trusts a custodian by: the consortium CA, its CRL, and its site policy's pins."""

    ca_cert: x509.Certificate
    revocation: pki.RevocationList | None = None
    allowed_custodians: frozenset[str] | None = None  # certificate fingerprints; None: any current silo


def load_custodian_cert(pem: bytes) -> x509.Certificate:
    if not pem:
        raise EndorsementError(f"the key comes without its custodian's certificate; {RECREATE}")
    if len(pem) > MAX_CERT_PEM_BYTES:
        raise EndorsementError(f"custodian certificate is {len(pem)} bytes (limit {MAX_CERT_PEM_BYTES})")
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise EndorsementError(f"custodian certificate cannot be read: {exc}") from None


def verify_endorsement(
    endorsement: Endorsement,
    custodian_cert: x509.Certificate,
    anchors: TrustAnchors,
    *,
    consortium: str,
    scope: str | None = None,
    custodian_name: str | None = None,
) -> pki.Identity:
    """Custodian current and allowed, signature valid, consortium and scope as expected.

    Raises EndorsementError with what is wrong and what to do; returns the custodian's identity.
    """
    try:
        identity = pki.verify_certificate(
            custodian_cert, anchors.ca_cert, roles=("silo",), revocation=anchors.revocation
        )
    except PKIError as exc:
        raise EndorsementError(f"key custodian not trusted: {exc}; {RECREATE} by a current member") from None
    if identity.fingerprint != endorsement.custodian_cert_fingerprint:
        raise EndorsementError("the endorsement names another custodian certificate than the one it came with")
    if custodian_name is not None and identity.name != custodian_name:
        raise EndorsementError(f"the key was endorsed by {identity.name!r}, not by {custodian_name!r}")
    if anchors.allowed_custodians is not None and identity.fingerprint not in anchors.allowed_custodians:
        raise EndorsementError(
            f"key custodian {identity.name} (certificate {identity.fingerprint[:16]}...) is not in the site "
            "policy's key_custodians; if it is your consortium's custodian, have the privacy officer add it"
        )
    public_key = custodian_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise EndorsementError("custodian certificate does not hold an EC key")
    try:
        public_key.verify(endorsement.signature, endorsement.statement(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise EndorsementError(f"the custodian's signature over this key does not verify; {RECREATE}") from None
    if endorsement.consortium != consortium:
        raise EndorsementError(f"the key was endorsed for consortium {endorsement.consortium!r}, not {consortium!r}")
    if scope is not None and endorsement.scope != scope:
        raise EndorsementError(f"the key was endorsed for scope {endorsement.scope!r}, not {scope!r}")
    return identity


def check_recipients_current(endorsement: Endorsement, revocation: pki.RevocationList | None) -> None:
    """Rotation on revocation: a key shared with a revoked member is never used for a new job."""
    if revocation is None:
        return
    for r in endorsement.recipients:
        if revocation.is_revoked(r.cert_serial):
            raise EndorsementError(
                f"HE key {endorsement.fingerprint} was shared with {r.name}, whose certificate is revoked; "
                "the key custodian must create a new key without the revoked member (`cipherfed keys create`)"
            )


def check_my_blob(endorsement: Endorsement, name: str, my_cert: x509.Certificate, blob: bytes) -> None:
    """This node is a recipient under its own certificate, and the blob is the one the custodian wrapped."""
    mine = endorsement.recipient(name)
    if mine is None or mine.cert_fingerprint != pki.certificate_fingerprint(my_cert):
        raise EndorsementError(
            f"the custodian did not endorse key {endorsement.fingerprint} for this node's certificate; "
            f"{RECREATE} including this node"
        )
    if mine.blob_sha256 != sha256_hex(blob):
        raise EndorsementError(
            f"the wrapped key relayed for {endorsement.fingerprint} is not the blob the custodian wrapped for this "
            f"node; {RECREATE}"
        )


def encode_bundle(endorsement: Endorsement, custodian_cert: x509.Certificate) -> bytes:
    """Sidecar file form (``<blob or key>.endorsement``): the endorsement and the custodian's certificate."""
    pem = custodian_cert.public_bytes(serialization.Encoding.PEM).decode()
    return json.dumps({"endorsement": endorsement.encode().decode(), "custodian_cert": pem}).encode()


def decode_bundle(data: bytes) -> tuple[Endorsement, x509.Certificate]:
    if len(data) > MAX_ENCODED_BYTES + MAX_CERT_PEM_BYTES + 1024:
        raise EndorsementError("endorsement file too large")
    try:
        body = json.loads(data)
        endorsement_bytes = str(body["endorsement"]).encode()
        pem = str(body["custodian_cert"]).encode()
    except (ValueError, KeyError, TypeError) as exc:
        raise EndorsementError(f"endorsement file is malformed ({exc}); {RECREATE}") from None
    return Endorsement.decode(endorsement_bytes), load_custodian_cert(pem)
