"""The peers of one secure-aggregation session, as a silo verified them at agreement (and reads them back).

Kept apart from the round protocol (``secagg_round.py``) so that the tests, which recover a silo's
masks from its own disk, and the protocol read a stored roster the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from crypto.pki import certificate_fingerprint
from crypto.secagg.encoding import RoundContext
from crypto.secagg.keys import Advertisement, Roster
from protocol.secagg import decode_roster


@dataclass(frozen=True)
class Peers:
    """The verified roster: fingerprints, names and certificates of the silos in this session."""

    roster: Roster
    names: dict[str, str]  # fingerprint -> name
    certificates: dict[str, x509.Certificate]
    aggregator: x509.Certificate


def stored_peers(context: RoundContext, data: bytes) -> Peers:
    """The roster this silo verified at agreement, read back from its own disk."""
    message = decode_roster(data)
    names = {}
    certificates = {}
    adverts = []
    for entry in message.entries:
        cert = x509.load_pem_x509_certificate(entry.cert_pem)
        fp = certificate_fingerprint(cert)
        names[fp], certificates[fp] = entry.name, cert
        adverts.append(Advertisement.from_bytes(entry.advert))
    aggregator = x509.load_pem_x509_certificate(message.aggregator_pem)
    return Peers(Roster.build(context, adverts), names, certificates, aggregator)
