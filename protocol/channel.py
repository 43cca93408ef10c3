"""Client side of mutual TLS: every silo, admin and auditor connects the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from protocol import cipherfed_pb2_grpc as pbg

# Keepalive lets a node behind a NAT or firewall notice a dead connection and redial.
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 0),
]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes(),
            private_key=Path(self.key).read_bytes(),
            certificate_chain=Path(self.cert).read_bytes(),
        )


def secure_channel(address: str, tls: TlsFiles, server_name: str | None = None) -> grpc.Channel:
    """An mTLS channel to the aggregator; ``server_name`` overrides the name checked in its cert."""
    options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, tls.credentials(), options=options)


def consortium_stub(channel: grpc.Channel) -> pbg.ConsortiumStub:
    return pbg.ConsortiumStub(channel)
