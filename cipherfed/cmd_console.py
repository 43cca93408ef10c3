"""``cipherfed console``: the coordinator's and auditor's local web view (docs/console.md)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

import grpc

from crypto import pki
from protocol import cipherfed_pb2 as pb
from protocol.clientconfig import ClientConfig
from protocol.tomlconfig import load_toml

HOST = "127.0.0.1"  # never another interface: the console shows who is in the consortium


def register(sub: Any) -> None:
    console = sub.add_parser("console", help="local web console: jobs live, members, audit (coordinator, auditor)")
    console.add_argument("--config", type=Path, required=True, help="admin.toml or auditor.toml")
    console.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    console.add_argument("--audit-dir", type=Path, default=None, help="folder of collected audit logs (*.jsonl)")
    console.add_argument("--refresh", type=float, default=1.0, help="seconds between live updates (0.2-60)")
    console.set_defaults(handler=_console)


def _console(args: argparse.Namespace) -> int:
    import uvicorn

    from cipherfed.admin import connect
    from cipherfed.console.app import ConsoleSettings, build_app, new_token

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: {args.port} is not a TCP port (0-65535)")
    if not 0.2 <= args.refresh <= 60:
        raise ValueError(f"--refresh: {args.refresh} s is outside 0.2-60 s")
    if args.audit_dir is not None and not args.audit_dir.is_dir():
        raise FileNotFoundError(f"--audit-dir: {args.audit_dir} is not a folder")
    config = load_toml(ClientConfig, args.config)
    ca_cert = pki.load_certificate(config.tls.resolved(args.config.resolve().parent).ca)
    stub = connect(args.config)
    try:
        info = stub.ServerInfo(pb.ServerInfoRequest(), timeout=15)
    except grpc.RpcError as exc:
        print(f"cipherfed: cannot reach the aggregator at {config.aggregator}: {exc.code().name}: {exc.details()}")
        return 1
    if info.caller_role not in ("admin", "auditor"):
        print(f"cipherfed: {info.caller} has role {info.caller_role!r}; the console needs an admin or auditor cert")
        return 1
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, args.port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"--port: cannot listen on {HOST}:{args.port} ({exc.strerror}); pick another port") from None
    sock.listen(128)  # listening before the URL is printed: whoever reads it can connect at once
    port = sock.getsockname()[1]
    settings = ConsoleSettings(
        token=new_token(),
        port=port,
        stub=stub,
        audit_dir=args.audit_dir.resolve() if args.audit_dir else None,
        ca_cert=ca_cert,
        refresh_s=args.refresh,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(settings), log_level="warning", timeout_graceful_shutdown=1, access_log=False, lifespan="off"
        )
    )
    print(f"cipherfed console for {info.caller} ({info.caller_role}) of consortium {info.consortium}", flush=True)
    print(f"open: http://{HOST}:{port}/?token={settings.token}", flush=True)
    print("the token in this URL is the only key to the console: do not share it. Ctrl-C to stop.", flush=True)
    server.run(sockets=[sock])
    return 0
