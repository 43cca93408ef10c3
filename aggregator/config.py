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
    max_workers: int = Field(32, ge=4, description="threads for unary calls (status, submit, metrics, keys)")
    max_streams: int = Field(
        64, ge=2, description="streams and long polls served at once, on their own threads (Upload, Send, Watch...)"
    )
    max_streams_per_identity: int = Field(
        8, ge=1, description="streams and long polls one certificate may hold at once; more: RESOURCE_EXHAUSTED"
    )
    max_queued_rpcs: int = Field(64, ge=0, description="calls waiting for a thread beyond which new calls are refused")
    stream_idle_timeout_s: float = Field(
        60.0, gt=0, le=86_400, description="an Upload or Send that sends nothing this long is cancelled"
    )
    max_stream_s: float = Field(3600.0, gt=0, le=86_400, description="any stream open this long is cancelled")
    max_message_bytes: int = Field(4 << 20, ge=1 << 20, le=64 << 20, description="largest gRPC message accepted")
    max_send_bytes: int = Field(64 << 20, ge=1 << 20, description="payload bytes one relay Send may carry")
    max_send_messages: int = Field(4096, ge=1, description="messages one relay Send may carry")
    max_update_values: int = Field(
        1 << 28, ge=1, description="values one upload may declare (its layout); larger manifests are refused"
    )
    audit_log: Path | None = Field(None, description="signed audit log (default: state_dir/audit.jsonl)")
    consortium_policy: Path | None = None


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
