"""A whole consortium on this machine: CA, certificates, HE keys, configs and real processes.

Used by ``cipherfed demo`` and by the integration tests, so both exercise exactly what an
operator would: separate OS processes talking mTLS gRPC over 127.0.0.1. The provisioning steps are
the same library calls the ``ca``, ``node`` and ``keys`` commands make.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from audit.log import AuditLog
from cipherfed import __version__
from crypto import pki
from crypto.custody import CustodyBundle, create_and_wrap
from crypto.endorsement import encode_bundle
from protocol.channel import TlsFiles, consortium_stub, secure_channel

CONSORTIUM = "Demo Health Consortium"


@dataclass
class NodeFiles:
    name: str
    dir: Path
    cert: Path
    key: Path
    config: Path
    data: Path


@dataclass
class LocalConsortium:
    workdir: Path
    silos: list[str]
    consortium: str = CONSORTIUM
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    port: int = 0
    fingerprint: str = ""  # the consortium's `sum` key (node.toml's secret_key / wrapped_key)
    fingerprints: dict[str, str] = field(default_factory=dict)  # profile -> fingerprint of every key created

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.ca_dir = self.workdir / "ca"
        self.agg_dir = self.workdir / "aggregator"
        self.admin_dir = self.workdir / "coordinator"
        self.logs = self.workdir / "logs"
        self.nodes: dict[str, NodeFiles] = {}

    # ------------------------------------------------------------------ provisioning
    def provision(self, he_keys: bool = True) -> None:
        for d in (self.agg_dir, self.admin_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        pki.init_ca(self.ca_dir, self.consortium)
        pki.issue(self.ca_dir, "aggregator", "aggregator", self.agg_dir, dns=["localhost"], ips=["127.0.0.1"])
        pki.issue(self.ca_dir, "coordinator", "admin", self.admin_dir)
        pki.issue(self.ca_dir, "auditor", "auditor", self.admin_dir)
        for name in self.silos:
            node_dir = self.workdir / name
            node_dir.mkdir(parents=True, exist_ok=True)
            key, csr = pki.make_csr(name, node_dir)  # the node's key is born in the node's directory
            cert = pki.sign_csr(self.ca_dir, csr, "silo")
            self.nodes[name] = NodeFiles(name, node_dir, cert, key, node_dir / "node.toml", node_dir / "data.csv")
        if he_keys:
            self.distribute_he_keys()

    def distribute_he_keys(self) -> None:
        """Key custody at the first silo: secret stays there, blobs wrapped to the others, public to the aggregator."""
        custodian = self.silos[0]
        bundle, endorsement = self._create_key("sum")
        node = self.nodes[custodian]
        pki.write_secret_file(node.dir / "he_secret.key", bundle.keys.export_secret())
        (node.dir / "he_secret.key.endorsement").write_bytes(endorsement)
        for member, blob in bundle.wrapped.items():
            (self.nodes[member].dir / "he_key.wrapped").write_bytes(blob)
            (self.nodes[member].dir / "he_key.wrapped.endorsement").write_bytes(endorsement)
        self.fingerprint = bundle.fingerprint

    def add_he_key(self, profile: str) -> str:
        """A further key set (e.g. profile ``compact``) in every node's key cache, as `keys create` leaves it.

        The custodian keeps the secret export, each member its wrapped copy (both endorsed), in
        ``state/keys`` where a node looks for keys beyond its configured one; the aggregator gets the
        public context. Returns the fingerprint for job specs.
        """
        custodian = self.silos[0]
        bundle, endorsement = self._create_key(profile)
        fp = bundle.fingerprint
        cache = self.nodes[custodian].dir / "state" / "keys"
        cache.mkdir(parents=True, exist_ok=True)
        pki.write_secret_file(cache / f"{fp}.key", bundle.keys.export_secret())
        (cache / f"{fp}.key.endorsement").write_bytes(endorsement)
        for member, blob in bundle.wrapped.items():
            cache = self.nodes[member].dir / "state" / "keys"
            cache.mkdir(parents=True, exist_ok=True)
            (cache / f"{fp}.wrapped").write_bytes(blob)
            (cache / f"{fp}.wrapped.endorsement").write_bytes(endorsement)
        self.fingerprints[profile] = fp
        return fp

    def _create_key(self, profile: str) -> tuple[CustodyBundle, bytes]:
        """Generate and wrap a key set at the first silo (audited there); the aggregator gets its public context."""
        custodian, *members = self.silos
        node = self.nodes[custodian]
        custodian_cert = pki.load_certificate(node.cert)
        bundle = create_and_wrap(
            [pki.load_certificate(self.nodes[m].cert) for m in members],
            consortium=self.consortium,
            custodian_key=pki.load_private_key(node.key),
            custodian_cert=custodian_cert,
            profile=profile,
        )
        endorsement = encode_bundle(bundle.endorsement, custodian_cert)  # members refuse a key without it
        log = AuditLog(
            node.dir / "state" / "audit.jsonl",
            pki.load_private_key(node.key),
            pki.load_certificate(node.cert),
            __version__,
        )
        log.append("key_generated", custodian, fingerprint=bundle.fingerprint, profile=profile, scope="consortium")
        log.append(
            "key_wrapped",
            custodian,
            fingerprint=bundle.fingerprint,
            recipients=sorted(bundle.wrapped),
            scope="consortium",
        )
        log.close()
        keys_dir = self.agg_dir / "keys"
        keys_dir.mkdir(exist_ok=True)
        (keys_dir / f"{bundle.fingerprint}.ctx").write_bytes(bundle.public_export)
        self.fingerprints[profile] = bundle.fingerprint
        return bundle, endorsement

    def write_data(
        self, name: str, features: np.ndarray, labels: np.ndarray, columns: list[str], label: str = "label"
    ) -> Path:
        path = self.nodes[name].data
        with open(path, "w") as f:
            f.write(",".join([*columns, label]) + "\n")
            for row, y in zip(features, labels, strict=True):
                f.write(",".join(repr(float(v)) for v in row) + f",{int(y)}\n")
        return path

    def write_aggregator_config(self, port: int = 0, extra: str = "") -> Path:
        path = self.agg_dir / "aggregator.toml"
        path.write_text(f"""# cipherfed aggregator (written by the local consortium builder)
consortium = "{self.consortium}"
listen = "127.0.0.1:{port}"
state_dir = "state"
port_file = "port"
keys_dir = "keys"
tick_s = 0.2
{extra}
[tls]
cert = "aggregator.crt"
key = "aggregator.key"
ca = "{self.ca_dir / "ca.crt"}"
crl = "{self.ca_dir / "crl.pem"}"
""")
        return path

    def write_node_config(self, name: str, extra: str = "", keys: str | None = None) -> Path:
        node = self.nodes[name]
        if keys is None:
            keys = (
                'secret_key = "he_secret.key"'
                if (node.dir / "he_secret.key").exists()
                else 'wrapped_key = "he_key.wrapped"'
            )
        node.config.write_text(f"""# cipherfed silo node {name}
name = "{name}"
consortium = "{self.consortium}"
aggregator = "127.0.0.1:{self.port}"
server_name = "localhost"
state_dir = "state"
poll_wait_s = 2.0
{extra}
[tls]
ca = "{self.ca_dir / "ca.crt"}"
crl = "{self.ca_dir / "crl.pem"}"
cert = "{node.cert.name}"
key = "{node.key.name}"

[data]
path = "data.csv"
validation_fraction = 0.2

[keys]
{keys}
""")
        return node.config

    def write_admin_config(self, who: str = "coordinator") -> Path:
        path = self.admin_dir / f"{who}.toml"
        path.write_text(f"""aggregator = "127.0.0.1:{self.port}"
server_name = "localhost"

[tls]
ca = "{self.ca_dir / "ca.crt"}"
cert = "{who}.crt"
key = "{who}.key"
""")
        return path

    # ------------------------------------------------------------------ processes
    def _spawn(self, label: str, args: list[str], env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{label}.log", "ab")  # noqa: SIM115 - owned by the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
        proc = subprocess.Popen(
            [sys.executable, "-m", "cipherfed", *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        self.processes[label] = proc
        return proc

    def start_aggregator(self, timeout: float = 60.0) -> int:
        port_file = self.agg_dir / "port"
        port_file.unlink(missing_ok=True)
        config = self.agg_dir / "aggregator.toml"
        if not config.exists():
            self.write_aggregator_config(self.port)
        proc = self._spawn("aggregator", ["aggregator", "start", "--config", str(config)])
        deadline = time.time() + timeout
        while not port_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"aggregator exited with {proc.returncode}; see {self.logs / 'aggregator.log'}")
            if time.time() > deadline:
                raise TimeoutError("aggregator did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.wait_healthy(deadline - time.time())
        return self.port

    def wait_healthy(self, timeout: float = 30.0) -> None:
        channel = self.channel("coordinator")
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.time() + timeout
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                if time.time() > deadline:
                    raise
            time.sleep(0.1)

    def start_node(self, name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``env``: extra environment, e.g. a fault to inject (``silo_node.faults.FAULT_STOP_AFTER_AGREEMENT``)."""
        if not self.nodes[name].config.exists():
            self.write_node_config(name)
        return self._spawn(name, ["node", "start", "--config", str(self.nodes[name].config)], env)

    def write_comparison_site_policy(self, name: str) -> str:
        """A site policy that opts this node in to plaintext comparison runs (``he_profile = "none"``).

        A node without a site policy refuses plaintext jobs; the demo and benchmarks compare HE with
        plaintext, so their nodes say yes explicitly, trusting only this consortium's aggregator.
        Returns the node.toml line that points at it.
        """
        aggregator = pki.certificate_fingerprint(pki.load_certificate(self.agg_dir / "aggregator.crt"))
        (self.nodes[name].dir / "comparison-site-policy.toml").write_text(
            f"""# written by the local consortium builder: allows plaintext comparison runs
kind = "site"
site = "{name}"
trusted_aggregators = ["{aggregator}"]
allowed_job_types = ["horizontal", "vertical"]
min_he_profile = "none"
"""
        )
        return 'site_policy = "comparison-site-policy.toml"'

    def start_all(
        self, node_keys: str | None = None, aggregator_extra: str = "", plaintext_comparison: bool = False
    ) -> Any:
        """Aggregator, then every node, then the coordinator's config; returns the coordinator's stub.

        ``plaintext_comparison`` opts the aggregator and every node in to ``he_profile = "none"`` jobs
        (refused by default on both sides), for runs that compare HE with plaintext.
        """
        if plaintext_comparison:
            aggregator_extra = f"{aggregator_extra}\nallow_plaintext_jobs = true"
        self.write_aggregator_config(extra=aggregator_extra)
        self.start_aggregator()
        for name in self.silos:
            extra = self.write_comparison_site_policy(name) if plaintext_comparison else ""
            self.write_node_config(name, extra=extra, keys=node_keys)
            self.start_node(name)
        self.write_admin_config()
        return self.stub("coordinator")

    def kill(self, label: str, sig: int = 9) -> None:
        proc = self.processes.pop(label, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def stop_all(self) -> None:
        for label in list(self.processes):
            proc = self.processes[label]
            if proc.poll() is None:
                proc.terminate()
        for label in list(self.processes):
            try:
                self.processes[label].wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.processes[label].kill()
            self.processes.pop(label)

    # ------------------------------------------------------------------ clients
    def tls(self, who: str) -> TlsFiles:
        if who in self.nodes:
            return TlsFiles(self.ca_dir / "ca.crt", self.nodes[who].cert, self.nodes[who].key)
        return TlsFiles(self.ca_dir / "ca.crt", self.admin_dir / f"{who}.crt", self.admin_dir / f"{who}.key")

    def channel(self, who: str) -> grpc.Channel:
        return secure_channel(f"127.0.0.1:{self.port}", self.tls(who), "localhost")

    def stub(self, who: str) -> Any:
        return consortium_stub(self.channel(who))


def job_toml(
    name: str,
    participants: list[str],
    fingerprint: str,
    features: list[str],
    *,
    rounds: int = 5,
    he_profile: str = "sum",
    min_silos: int = 2,
    model: str = 'type = "logreg"',
    local_epochs: int = 1,
    batch_size: int = 16,
    lr: float = 0.1,
    round_timeout_s: float = 60.0,
    max_round_retries: int = 2,
    extra: str = "",
    scaling: str = "federated",
    compact: str = "",
    secagg: str | None = None,
) -> str:
    """A horizontal job spec; ``compact``: the body of its [compact] table (he_profile = "compact");
    ``secagg``: secure aggregation on, with this body for its [secagg] table ("" for the defaults)."""
    quoted = ", ".join(f'"{p}"' for p in participants)
    cols = ", ".join(f'"{c}"' for c in features)
    fp = f'key_fingerprint = "{fingerprint}"\n' if he_profile in ("sum", "compact") else ""
    if secagg is not None:
        extra = f"secure_aggregation = true\n{extra}" + (f"\n[secagg]\n{secagg}\n" if secagg else "")
    if compact:
        extra = f"{extra}\n[compact]\n{compact}\n"
    return f"""name = "{name}"
partition = "horizontal"
rounds = {rounds}
local_epochs = {local_epochs}
batch_size = {batch_size}
lr = {lr}
min_silos = {min_silos}
round_timeout_s = {round_timeout_s}
max_round_retries = {max_round_retries}
he_profile = "{he_profile}"
{fp}participants = [{quoted}]
seed = 7
{extra}
[model]
{model}

[dataset]
features = [{cols}]
label = "label"
scaling = "{scaling}"
"""
