"""``cipherfed keys create`` at the key-custodian silo.

Generates the key set, keeps the secret export here (0600), and hands the aggregator only the
public context and one blob per member wrapped to that member's certificate. Every member
certificate must be issued by the consortium CA with role silo before anything is wrapped to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audit.events import EventSink
from crypto import pki
from crypto.custody import create_and_wrap
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
    members = []
    for path in member_certs:
        cert = pki.load_certificate(path)
        identity = pki.verify_certificate(cert, ca, roles=("silo",))
        if identity.name != config.name:
            members.append(cert)
    bundle = create_and_wrap(members, consortium=config.consortium, scope=scope, profile=profile)
    secret_path = config.state_dir / "keys" / f"{bundle.fingerprint}.key"
    write_secret_file(secret_path, bundle.keys.export_secret())
    names = sorted(bundle.wrapped)
    events.record("key_generated", config.name, fingerprint=bundle.fingerprint, profile=profile, scope=scope)
    events.record("key_wrapped", config.name, fingerprint=bundle.fingerprint, recipients=names, scope=scope)
    client = client or AggregatorClient(config.aggregator, config.tls.files(), config.server_name)
    client.stub.PutKeyMaterial(
        pb.KeyMaterial(
            scope=scope, fingerprint=bundle.fingerprint, public_context=bundle.public_export, wrapped=bundle.wrapped
        ),
        timeout=60,
    )
    events.record("key_material_uploaded", config.name, fingerprint=bundle.fingerprint, scope=scope, members=names)
    return CreatedKey(bundle.fingerprint, secret_path, names)
