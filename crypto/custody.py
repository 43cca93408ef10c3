"""The key custodian's one step: generate a key set and wrap its secret export to each member.

Runs at a silo (the custodian). The result has three parts with three destinations: the secret
export stays at the custodian, the public export goes to the aggregator, and each wrapped blob
goes to one member silo. None of them lets the aggregator or the coordinator decrypt.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from crypto.keys import SecretKeySet, generate_key_set
from crypto.pki import common_name
from crypto.wrapping import wrap_key


@dataclass
class CustodyBundle:
    keys: SecretKeySet
    public_export: bytes
    wrapped: dict[str, bytes]

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint


def create_and_wrap(
    members: list[x509.Certificate], *, consortium: str, scope: str = "consortium", profile: str = "sum"
) -> CustodyBundle:
    keys = generate_key_set(profile)
    secret = keys.export_secret()
    wrapped = {
        common_name(cert): wrap_key(secret, cert, consortium=consortium, job=scope, recipient=common_name(cert))
        for cert in members
    }
    return CustodyBundle(keys, keys.export_public(), wrapped)
