"""``node.toml``: everything a silo node needs, validated with field-level errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.clientconfig import ClientTls
from protocol.tomlconfig import load_toml


class DataSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(description="CSV or Parquet file with one row per record")
    format: Literal["csv", "parquet"] | None = Field(None, description="inferred from the file suffix if omitted")
    id_column: str | None = Field(None, description="entity id column (vertical jobs, predictions)")
    label: str | None = Field(None, description="label column this node offers")
    features: list[str] | None = Field(None, description="feature columns this node offers; jobs may use no others")
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0)


class HEKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret_key: Path | None = Field(None, description="this silo's CKKS secret export (custodian), mode 0600")
    wrapped_key: Path | None = Field(None, description="secret export wrapped to this node's certificate")
    scope: str = Field("consortium", description="key scope fetched from the aggregator when no file is given")


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="must equal the common name in this node's certificate")
    consortium: str
    aggregator: str = Field(description="host:port; the node dials out, it never listens")
    server_name: str | None = None
    tls: ClientTls
    data: DataSource
    state_dir: Path
    keys: HEKeys = Field(default_factory=lambda: HEKeys())
    poll_wait_s: float = Field(5.0, gt=0, le=10)
    site_policy: Path | None = None
    audit_log: Path | None = Field(None, description="signed audit log (default: state_dir/audit.jsonl)")


def load_node_config(path: Path | str) -> NodeConfig:
    """Load and validate; relative paths are taken relative to the config file."""
    path = Path(path)
    config = load_toml(NodeConfig, path)
    base = path.resolve().parent

    def rel(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    config.tls = config.tls.resolved(base)
    config.data.path = rel(config.data.path) or config.data.path
    config.state_dir = rel(config.state_dir) or config.state_dir
    config.keys.secret_key = rel(config.keys.secret_key)
    config.keys.wrapped_key = rel(config.keys.wrapped_key)
    config.site_policy = rel(config.site_policy)
    config.audit_log = rel(config.audit_log) or config.state_dir / "audit.jsonl"
    return config
