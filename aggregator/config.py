"""``aggregator.toml``: where the aggregator listens, its TLS files, its state and its consortium."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from protocol.tomlconfig import load_toml


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cert: Path
    key: Path
    ca: Path
    crl: Path | None = Field(None, description="revocation list written by `cipherfed ca revoke`; reloaded on change")


class AggregatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    consortium: str
    listen: str = Field("127.0.0.1:7443", description="host:port; port 0 picks a free port (see port_file)")
    state_dir: Path
    tls: TlsConfig
    port_file: Path | None = None
    keys_dir: Path | None = Field(None, description="pre-provisioned public contexts (*.ctx)")
    tick_s: float = Field(0.25, gt=0)
    min_silos_per_aggregate: int = Field(2, ge=1, description="no aggregate is released with fewer contributors")
    max_workers: int = Field(32, ge=4)
    audit_log: Path | None = Field(None, description="signed audit log (default: state_dir/audit.jsonl)")
    consortium_policy: Path | None = None
    server_name: str | None = Field(
        None,
        description="name `aggregator health` verifies in this server's certificate "
        "(default: the certificate's first DNS name or IP address)",
    )


def load_aggregator_config(path: Path | str) -> AggregatorConfig:
    """Load and validate; relative paths are taken relative to the config file."""
    path = Path(path)
    config = load_toml(AggregatorConfig, path)
    base = path.resolve().parent

    def rel(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    config.state_dir = rel(config.state_dir) or config.state_dir
    config.tls.cert, config.tls.key, config.tls.ca = (
        rel(config.tls.cert) or config.tls.cert,
        rel(config.tls.key) or config.tls.key,
        rel(config.tls.ca) or config.tls.ca,
    )
    config.tls.crl = rel(config.tls.crl)
    config.port_file = rel(config.port_file)
    config.keys_dir = rel(config.keys_dir)
    config.audit_log = rel(config.audit_log) or config.state_dir / "audit.jsonl"
    config.consortium_policy = rel(config.consortium_policy)
    return config
