"""``aggregator.toml``: where the aggregator listens, its TLS files, its state and its consortium."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.names import factory_reference
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
    min_silos_per_aggregate: int = Field(
        2, ge=2, description="no aggregate is released with fewer contributors (at least 2: one is a silo's own update)"
    )
    allowed_factories: list[str] = Field(
        default_factory=list,
        description="model factories ('package.module:function') jobs may name when no consortium_policy is set; "
        "empty: factory jobs are refused (silos check their own site policy too)",
    )
    allow_plaintext_jobs: bool = Field(
        False,
        description='accept he_profile = "none" jobs when no consortium_policy is set (comparison runs only); '
        "with a consortium policy its allowed_he_profiles decides",
    )
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
    metrics_listen: str | None = Field(
        None,
        pattern=r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="host:port of a plain-HTTP Prometheus /metrics endpoint (off when unset); "
        "keep it on 127.0.0.1 or a monitoring network",
    )
    server_name: str | None = Field(
        None,
        description="name `aggregator health` verifies in this server's certificate "
        "(default: the certificate's first DNS name or IP address)",
    )

    @field_validator("allowed_factories")
    @classmethod
    def _factories(cls, v: list[str]) -> list[str]:
        return [factory_reference(x) for x in v]


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
