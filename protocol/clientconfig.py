"""How a client (silo node, admin, auditor) reaches the aggregator: address and mTLS files."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from protocol.channel import TlsFiles


class ClientTls(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ca: Path = Field(description="the consortium CA certificate")
    cert: Path = Field(description="this party's certificate, signed by the consortium CA")
    key: Path = Field(description="this party's private key (mode 0600)")
    crl: Path | None = Field(
        None,
        description="the consortium's revocation list (crl.pem); silos refuse keys shared with revoked members",
    )

    def files(self) -> TlsFiles:
        return TlsFiles(self.ca, self.cert, self.key)

    def resolved(self, base: Path) -> ClientTls:
        def rel(p: Path) -> Path:
            return p if p.is_absolute() else base / p

        return ClientTls(
            ca=rel(self.ca), cert=rel(self.cert), key=rel(self.key), crl=rel(self.crl) if self.crl else None
        )


class ClientConfig(BaseModel):
    """``admin.toml`` / ``auditor.toml``: the coordinator's or auditor's connection."""

    model_config = ConfigDict(extra="forbid")
    aggregator: str = Field(description="host:port of the aggregator")
    server_name: str | None = Field(None, description="name in the aggregator certificate, if not the host")
    tls: ClientTls
