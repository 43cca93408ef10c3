"""``cipherfed node doctor``: is this node ready? Each check says ok, warn or fail, and what to do.

Written for the institution's IT: every failure names the file or setting involved and the next
step. Checks that need the aggregator are skipped (and say so) when it cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crypto import pki
from crypto.errors import CryptoError, ExpiredCertificateError, PKIError, UntrustedCertificateError
from protocol import cipherfed_pb2 as pb
from protocol.channel import consortium_stub, secure_channel
from protocol.tomlconfig import ConfigError
from silo_node.config import NodeConfig, load_node_config
from silo_node.data import DataError, column_names

Status = Literal["ok", "warn", "fail", "skip"]
EXPIRY_WARNING_DAYS = 30
SKEW_WARN_S, SKEW_FAIL_S = 5.0, 60.0
DISK_WARN, DISK_FAIL = 1 << 30, 100 << 20


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _mode_ok(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


class Doctor:
    def __init__(self, config_path: Path) -> None:
        self.config_path = Path(config_path)
        self.checks: list[Check] = []
        self.config: NodeConfig | None = None

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def run(self) -> list[Check]:
        try:
            self.config = load_node_config(self.config_path)
        except ConfigError as exc:
            self.add("config", "fail", str(exc), f"edit {self.config_path} as the lines above say")
            return self.checks
        self.add("config", "ok", f"{self.config_path} is valid (node {self.config.name!r})")
        config = self.config
        self._permissions(config)
        cert_ok = self._certificate(config)
        server = self._aggregator(config) if cert_ok else None
        self._data(config)
        self._policy(config, server)
        if cert_ok:
            self._he_keys(config, server)
        else:  # the HE key is wrapped to this node's certificate: nothing to check without a usable one
            self.add("HE key", "skip", "not checked: this node's certificate or key failed above", "fix that first")
        self._disk(config)
        return self.checks

    def _permissions(self, config: NodeConfig) -> None:
        secrets = [config.tls.key]
        if config.keys.secret_key is not None:
            secrets.append(config.keys.secret_key)
        secrets += sorted((config.state_dir / "keys").glob("*.key")) if (config.state_dir / "keys").exists() else []
        for path in secrets:
            if not path.exists():
                self.add(
                    "key file",
                    "fail",
                    f"{path} does not exist",
                    "run `cipherfed node init` (node key) or check [tls].key / [keys].secret_key",
                )
            elif not _mode_ok(path):
                mode = oct(stat.S_IMODE(path.stat().st_mode))
                self.add("key permissions", "fail", f"{path} is readable by others (mode {mode})", f"chmod 600 {path}")
            else:
                self.add("key permissions", "ok", f"{path} is private (0600)")

    def _certificate(self, config: NodeConfig) -> bool:
        for path, what in ((config.tls.cert, "this node's certificate"), (config.tls.ca, "the consortium CA")):
            if not path.exists():
                self.add(
                    "certificate",
                    "fail",
                    f"{path} ({what}) does not exist",
                    f"put {path.name} from the consortium admin (the reply to your CSR) in {path.parent}",
                )
                return False
        try:
            cert = pki.load_certificate(config.tls.cert)
            ca = pki.load_certificate(config.tls.ca)
        except PKIError as exc:
            self.add("certificate", "fail", str(exc), "copy the certificate the consortium admin signed, and ca.crt")
            return False
        try:
            ident = pki.verify_certificate(cert, ca, roles=("silo",))
        except UntrustedCertificateError as exc:
            self.add(
                "certificate chain",
                "fail",
                str(exc),
                f"{config.tls.ca} is not your consortium's CA, or the certificate was signed by another CA",
            )
            return False
        except ExpiredCertificateError as exc:
            self.add("certificate expiry", "fail", str(exc), "send a new CSR (`cipherfed node init`) to the admin")
            return False
        except PKIError as exc:
            self.add("certificate role", "fail", str(exc), "ask the admin to sign the CSR with --role silo")
            return False
        if ident.name != config.name:
            self.add(
                "certificate name",
                "fail",
                f"certificate is for {ident.name!r}, node.toml says {config.name!r}",
                "make `name` in node.toml equal the certificate's common name",
            )
            return False
        days = (ident.not_after - dt.datetime.now(dt.UTC)).days
        if days < EXPIRY_WARNING_DAYS:
            self.add(
                "certificate expiry",
                "warn",
                f"certificate expires in {days} days ({ident.not_after:%Y-%m-%d})",
                "renew it now: new CSR, `cipherfed ca sign`, replace the .crt, then `cipherfed ca revoke` the old "
                "serial (the aggregator keeps the name pinned to the old certificate until it is revoked or expires)",
            )
        else:
            self.add(
                "certificate",
                "ok",
                f"silo certificate for {ident.name}, issued by the consortium CA, "
                f"valid until {ident.not_after:%Y-%m-%d}",
            )
        try:
            key = pki.load_private_key(config.tls.key)
        except (OSError, ValueError, PKIError) as exc:
            self.add("private key", "fail", f"cannot read {config.tls.key}: {exc}", "check [tls].key")
            return False
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*fmt) != cert.public_key().public_bytes(*fmt):
            self.add(
                "private key",
                "fail",
                f"{config.tls.key} does not belong to {config.tls.cert}",
                "use the key `node init` created together with the CSR the admin signed",
            )
            return False
        return True

    def _aggregator(self, config: NodeConfig) -> pb.ServerInfoReply | None:
        channel = secure_channel(config.aggregator, config.tls.files(), config.server_name)
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="cipherfed.v1.Consortium"), timeout=5
            )
            t0 = time.time()
            info = consortium_stub(channel).ServerInfo(pb.ServerInfoRequest(), timeout=5)
            t1 = time.time()
        except grpc.RpcError as exc:
            self.add(
                "aggregator",
                "fail",
                f"{config.aggregator}: {exc.code().name}: {(exc.details() or '')[:200]}",
                "check the address, that outbound TCP to it is allowed by your firewall, and that the "
                "aggregator is running; a TLS failure means a certificate or CA mismatch",
            )
            return None
        finally:
            channel.close()
        serving = health.status == health_pb2.HealthCheckResponse.SERVING
        state = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
        self.add(
            "aggregator",
            "ok" if serving else "fail",
            f"mutual TLS to {config.aggregator} works; health: {state}; "
            f"authenticated as {info.caller} ({info.caller_role}) in {info.consortium!r}",
            "" if serving else "the aggregator is shutting down or unhealthy; ask the coordinator",
        )
        if info.consortium != config.consortium:
            self.add(
                "consortium",
                "fail",
                f"aggregator serves {info.consortium!r}, node.toml says {config.consortium!r}",
                "set `consortium` in node.toml to the consortium's exact name",
            )
        skew = abs(info.server_time_unix_ms / 1000 - (t0 + t1) / 2)
        status: Status = "ok" if skew < SKEW_WARN_S else "warn" if skew < SKEW_FAIL_S else "fail"
        self.add(
            "clock",
            status,
            f"clock differs from the aggregator's by {skew:.1f} s",
            "" if status == "ok" else "enable NTP (timedatectl set-ntp true): deadlines and certificates need it",
        )
        return info

    def _data(self, config: NodeConfig) -> None:
        try:
            names = column_names(config.data.path, config.data.format)
        except DataError as exc:
            self.add("data source", "fail", str(exc), "fix [data].path in node.toml, or the file's permissions")
            return
        wanted = list(config.data.features or []) + [c for c in (config.data.label, config.data.id_column) if c]
        missing = [c for c in wanted if c not in names]
        if missing:
            self.add(
                "data columns",
                "fail",
                f"{config.data.path} lacks column(s) {', '.join(missing)}",
                f"the file has {len(names)} columns: {', '.join(names)}; fix [data] features/label/id_column",
            )
        else:
            self.add(
                "data source",
                "ok",
                f"{config.data.path} is readable: {len(names)} columns"
                + (f", all {len(wanted)} declared columns present" if wanted else ""),
            )

    def _policy(self, config: NodeConfig, server: pb.ServerInfoReply | None) -> None:
        if config.site_policy is None:
            self.add(
                "site policy",
                "warn",
                "no site policy: this node accepts any job the consortium sends",
                "ask your privacy officer for a site policy and set site_policy in node.toml",
            )
            return
        from policies.schema import load_site_policy
        from silo_node.peer import aggregator_certificate

        try:
            policy = load_site_policy(config.site_policy)
        except ConfigError as exc:
            self.add("site policy", "fail", str(exc), "fix the policy file (`cipherfed policy validate`)")
            return
        self.add("site policy", "ok", f"{config.site_policy} is valid ({len(policy.denied_columns)} denied patterns)")
        if server is None:
            self.add("aggregator pin", "skip", "aggregator unreachable", "")
            return
        try:
            fingerprint = pki.certificate_fingerprint(
                aggregator_certificate(config.aggregator, config.tls.files(), config.server_name)
            )
        except OSError as exc:
            self.add("aggregator pin", "fail", f"cannot read the aggregator's certificate: {exc}", "")
            return
        if fingerprint in policy.trusted_aggregators:
            self.add("aggregator pin", "ok", f"aggregator certificate {fingerprint[:16]}... is trusted by the policy")
        else:
            self.add(
                "aggregator pin",
                "fail",
                f"aggregator certificate {fingerprint} is not in trusted_aggregators",
                "if this is your consortium's aggregator, have the privacy officer add that fingerprint",
            )

    def _he_keys(self, config: NodeConfig, server: pb.ServerInfoReply | None) -> None:
        from silo_node.keys import NodeKeys, key_trust

        try:
            keys = NodeKeys(
                config.keys,
                config.name,
                config.consortium,
                pki.load_private_key(config.tls.key),
                pki.load_certificate(config.tls.cert),
                config.state_dir / "keys",
                trust=key_trust(config),
            )
            local = keys.fingerprints()
        except (CryptoError, OSError, ValueError, PKIError) as exc:
            self.add(
                "HE key",
                "fail",
                f"cannot load this node's HE key: {exc}",
                "ask the key custodian to re-run `cipherfed keys create` including this node",
            )
            return
        remote = list(server.key_fingerprints) if server else []
        refused = keys.refused()
        if refused and not local:
            what, reason = sorted(refused.items())[0]
            self.add(
                "HE key",
                "fail",
                f"refuses HE key {what}: {reason}",
                "ask the key custodian to re-run `cipherfed keys create` including this node",
            )
            return
        if local:
            matching = [f for f in local if f in remote]
            if server is None:
                self.add("HE key", "skip", f"holds {', '.join(local)}; aggregator unreachable to compare")
            elif matching:
                self.add("HE key", "ok", f"holds HE key {matching[0]}, registered at the aggregator")
            else:
                self.add(
                    "HE key",
                    "fail",
                    f"holds {', '.join(local)} but the aggregator knows {', '.join(remote) or 'none'}",
                    "the consortium key changed: ask the custodian to run `cipherfed keys create` for this node",
                )
        elif remote:
            self.add(
                "HE key",
                "ok",
                f"no local copy yet; the aggregator holds {', '.join(remote)} "
                "(fetched wrapped to this node on first use)",
            )
        else:
            self.add(
                "HE key",
                "warn",
                "no HE key exists yet in the consortium",
                "the key custodian runs `cipherfed keys create` once every member has a certificate",
            )

    def _disk(self, config: NodeConfig) -> None:
        target = config.state_dir if config.state_dir.exists() else config.state_dir.parent
        free = shutil.disk_usage(target).free
        status: Status = "ok" if free >= DISK_WARN else "warn" if free >= DISK_FAIL else "fail"
        self.add(
            "disk",
            status,
            f"{free / 2**30:.1f} GiB free at {target}",
            "" if status == "ok" else "free space: uploads and aggregates are cached in state_dir",
        )


def heartbeat_age(config: NodeConfig) -> float | None:
    path = config.state_dir / "heartbeat"
    if not path.exists():
        return None
    return time.time() - float(path.read_text().split()[0])


def contact_lost(config: NodeConfig) -> tuple[float, str] | None:
    """(seconds ago, gRPC code) of the last failed poll if no poll has succeeded since, else None."""
    failed = config.state_dir / "heartbeat.failed"
    if not failed.exists():
        return None
    at, _, code = failed.read_text().strip().partition(" ")
    ok = config.state_dir / "heartbeat"
    last_ok = float(ok.read_text().split()[0]) if ok.exists() else 0.0
    return (time.time() - float(at), code) if float(at) > last_ok else None
