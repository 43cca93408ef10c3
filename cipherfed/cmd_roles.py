"""``cipherfed aggregator ...`` and ``cipherfed node ...``: run, enroll, check and probe a role's process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def register(sub: Any) -> None:
    agg = sub.add_parser("aggregator", help="the consortium service (coordinator)")
    agg_cmds = agg.add_subparsers(dest="aggregator_command", metavar="ACTION", required=True)
    start = agg_cmds.add_parser("start", help="serve until SIGTERM/SIGINT")
    start.add_argument("--config", type=Path, required=True, help="aggregator.toml")
    start.set_defaults(handler=_aggregator_start)
    health = agg_cmds.add_parser("health", help="gRPC health check with the aggregator's own certificate (probes)")
    health.add_argument("--config", type=Path, required=True)
    health.add_argument("--address", default=None, help="host:port (default: from the config's listen)")
    health.add_argument(
        "--server-name",
        default=None,
        help="name to verify in the aggregator's certificate (default: server_name in the config, else the "
        "certificate's first DNS name or IP)",
    )
    health.set_defaults(handler=_aggregator_health)

    node = sub.add_parser("node", help="a silo node (institution IT)")
    node_cmds = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    init = node_cmds.add_parser("init", help="create this node's private key (0600), a CSR and node.toml")
    init.add_argument("--name", required=True, help="the node's name (its certificate's common name)")
    init.add_argument("--aggregator", required=True, help="host:port of the aggregator")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--consortium", default="", help="consortium name (written into node.toml)")
    init.add_argument(
        "--server-name",
        default=None,
        help="the name in the aggregator's certificate, when --aggregator is an IP address or another name",
    )
    init.add_argument(
        "--state-dir",
        default=None,
        help="where the node writes state, models and its audit log (default: /var/lib/cipherfed when --dir is "
        "under /etc, as the systemd unit expects; else 'state' next to node.toml)",
    )
    init.set_defaults(handler=_node_init)
    nstart = node_cmds.add_parser("start", help="dial out to the aggregator and work on jobs")
    nstart.add_argument("--config", type=Path, required=True, help="node.toml")
    nstart.set_defaults(handler=_node_start)
    doctor = node_cmds.add_parser("doctor", help="check everything a node needs; exit 1 on any failure")
    doctor.add_argument("--config", type=Path, required=True)
    doctor.add_argument("--json", action="store_true", help="machine-readable output (for monitoring)")
    doctor.set_defaults(handler=_node_doctor)
    nhealth = node_cmds.add_parser("health", help="liveness from the node's heartbeat (probes)")
    nhealth.add_argument("--config", type=Path, required=True)
    nhealth.add_argument("--max-age", type=float, default=120.0, help="seconds since the last successful poll")
    nhealth.set_defaults(handler=_node_health)


def _aggregator_start(args: argparse.Namespace) -> int:
    from aggregator.server import run

    return run(args.config)


def _aggregator_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from aggregator.config import load_aggregator_config
    from protocol.channel import TlsFiles, secure_channel

    config = load_aggregator_config(args.config)
    port = config.listen.rpartition(":")[2]
    if config.port_file and config.port_file.exists():
        port = config.port_file.read_text().strip()
    address = args.address or f"127.0.0.1:{port}"
    server_name = args.server_name or config.server_name or _own_name(config.tls.cert)
    channel = secure_channel(address, TlsFiles(config.tls.ca, config.tls.cert, config.tls.key), server_name)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()} (dialled {address}, verifying the name {server_name!r})")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _own_name(cert_path: Path) -> str | None:
    """The name the aggregator's own certificate was issued for: what a probe verifies, never a fixed host."""
    from crypto import pki

    names = pki.subject_alt_names(pki.load_certificate(cert_path))
    return names[0] if names else None


def _node_init(args: argparse.Namespace) -> int:
    from silo_node.enroll import init_node

    enrollment = init_node(args.name, args.aggregator, args.dir, args.consortium, args.state_dir, args.server_name)
    print(f"created {enrollment.key} (private key, mode 0600: it never leaves this machine)")
    print(f"created {enrollment.csr}: send it to the consortium admin, who runs")
    print(f"    cipherfed ca sign CA_DIR {enrollment.csr.name} --role silo")
    print(f"and sends back {args.name}.crt and ca.crt; put both in {args.dir}")
    print(f"state, trained models and the audit log go to state_dir = {enrollment.state_dir!r} (set in node.toml)")
    print(f"then fill in [data] in {enrollment.config} and run: cipherfed node doctor --config {enrollment.config}")
    return 0


def _node_start(args: argparse.Namespace) -> int:
    from silo_node.daemon import run

    return run(args.config)


def _node_doctor(args: argparse.Namespace) -> int:
    from silo_node.doctor import Doctor

    doctor = Doctor(args.config)
    checks = doctor.run()
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps({"ready": not doctor.failed, "checks": [asdict(c) for c in checks]}, indent=2))
        return 1 if doctor.failed else 0
    style = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]", "skip": "[dim]skip[/]"}
    table = Table(title=f"node doctor: {args.config}", title_justify="left")
    for column in ("check", "result", "detail", "what to do"):
        table.add_column(column, overflow="fold")
    for c in checks:
        table.add_row(c.name, style[c.status], c.detail, c.fix)
    Console(width=160).print(table)
    failures = sum(c.status == "fail" for c in checks)
    print(f"{failures} check(s) failed" if failures else "this node is ready")
    return 1 if doctor.failed else 0


def _node_health(args: argparse.Namespace) -> int:
    from silo_node.config import load_node_config
    from silo_node.doctor import contact_lost, heartbeat_age

    config = load_node_config(args.config)
    age = heartbeat_age(config)
    lost = contact_lost(config)
    if lost is not None:  # the last poll failed: a heartbeat from before that proves nothing about now
        since = "never" if age is None else f"{age:.0f} s ago"
        print(f"unhealthy: the last poll failed {lost[0]:.0f} s ago ({lost[1]}); last successful poll: {since}")
        return 1
    if age is None or age > args.max_age:
        print(
            "unhealthy: no successful poll "
            + ("yet" if age is None else f"for {age:.0f} s (more than --max-age {args.max_age:.0f} s)")
        )
        return 1
    print(f"healthy: last successful poll {age:.0f} s ago")
    return 0
