"""The key custodian's one step: generate a key set and wrap its secret export to each member.

Runs at a silo (the custodian). The result has three parts with three destinations: the secret
export stays at the custodian, the public export goes to the aggregator, and each wrapped blob
goes to one member silo. None of them lets the aggregator or the coordinator decrypt. The
custodian signs an endorsement over the fingerprint, the public export and every blob with its
certificate key (``crypto.endorsement``), so members can tell its key from one the aggregator made.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crypto.endorsement import Endorsement, endorse, validate_scope
from crypto.keys import SecretKeySet, generate_key_set
from crypto.pki import common_name
from crypto.wrapping import wrap_key


@dataclass
class CustodyBundle:
    keys: SecretKeySet
    public_export: bytes
    wrapped: dict[str, bytes]
    endorsement: Endorsement

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint


def create_and_wrap(
    members: list[x509.Certificate],
    *,
    consortium: str,
    custodian_key: ec.EllipticCurvePrivateKey,
    custodian_cert: x509.Certificate,
    scope: str = "consortium",
    profile: str = "sum",
) -> CustodyBundle:
    """Callers verify the member certificates first (chain, role, expiry, revocation)."""
    validate_scope(scope)
    keys = generate_key_set(profile)
    secret = keys.export_secret()
    by_name = {common_name(cert): cert for cert in members}
    wrapped = {
        name: wrap_key(secret, cert, consortium=consortium, job=scope, recipient=name) for name, cert in by_name.items()
    }
    public_export = keys.export_public()
    endorsement = endorse(
        custodian_key,
        custodian_cert,
        consortium=consortium,
        scope=scope,
        fingerprint=keys.fingerprint,
        profile=keys.profile.name,
        public_export=public_export,
        wrapped={name: (by_name[name], blob) for name, blob in wrapped.items()},
    )
    return CustodyBundle(keys, public_export, wrapped, endorsement)
