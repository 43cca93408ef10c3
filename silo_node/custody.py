"""``cipherfed keys create`` at the key-custodian silo.

Generates the key set, keeps the secret export here (0600), and hands the aggregator only the
public context and one blob per member wrapped to that member's certificate. Every member
certificate must be issued by the consortium CA with role silo, be within its validity period and
not be revoked (by the node's CRL, ``tls.crl``) before anything is wrapped to it. The custodian
signs an endorsement over the whole set with its certificate key; members refuse keys without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from audit.events import EventSink
from crypto import pki
from crypto.custody import create_and_wrap
from crypto.endorsement import encode_bundle
from crypto.errors import PKIError
from crypto.pki import write_secret_file
from protocol import cipherfed_pb2 as pb
from silo_node.client import AggregatorClient
from silo_node.config import NodeConfig


@dataclass
class CreatedKey:
    fingerprint: str
    secret_path: Path
    members: list[str]


def create_key(
    config: NodeConfig,
    member_certs: list[Path],
    scope: str,
    events: EventSink,
    client: AggregatorClient | None = None,
    profile: str = "sum",
) -> CreatedKey:
    ca = pki.load_certificate(config.tls.ca)
    revocation = pki.RevocationList(config.tls.crl, ca, config.state_dir / "crl_state.json") if config.tls.crl else None
    own_cert = pki.load_certificate(config.tls.cert)
    own_key = pki.load_private_key(config.tls.key)
    pki.verify_certificate(own_cert, ca, roles=("silo",), revocation=revocation)  # a custodian members accept
    members = []
    for path in member_certs:
        cert = pki.load_certificate(path)
        try:
            identity = pki.verify_certificate(cert, ca, roles=("silo",), revocation=revocation)
        except PKIError as exc:
            raise PKIError(
                f"--member-cert {path}: {exc}; leave it out or get the member a current certificate"
            ) from None
        if identity.name != config.name:
            members.append(cert)
    bundle = create_and_wrap(
        members,
        consortium=config.consortium,
        custodian_key=own_key,
        custodian_cert=own_cert,
        scope=scope,
        profile=profile,
    )
    secret_path = config.state_dir / "keys" / f"{bundle.fingerprint}.key"
    write_secret_file(secret_path, bundle.keys.export_secret())
    endorsement_path = secret_path.with_name(secret_path.name + ".endorsement")
    endorsement_path.write_bytes(encode_bundle(bundle.endorsement, own_cert))
    names = sorted(bundle.wrapped)
    events.record("key_generated", config.name, fingerprint=bundle.fingerprint, profile=profile, scope=scope)
    events.record("key_wrapped", config.name, fingerprint=bundle.fingerprint, recipients=names, scope=scope)
    client = client or AggregatorClient(config.aggregator, config.tls.files(), config.server_name)
    client.stub.PutKeyMaterial(
        pb.KeyMaterial(
            scope=scope,
            fingerprint=bundle.fingerprint,
            public_context=bundle.public_export,
            wrapped=bundle.wrapped,
            endorsement=bundle.endorsement.encode(),
            custodian_cert=own_cert.public_bytes(serialization.Encoding.PEM),
        ),
        timeout=60,
    )
    events.record("key_material_uploaded", config.name, fingerprint=bundle.fingerprint, scope=scope, members=names)
    return CreatedKey(bundle.fingerprint, secret_path, names)
