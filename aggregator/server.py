"""Running the aggregator: mTLS gRPC server, health service, deadline ticker, clean shutdown."""

from __future__ import annotations

import signal
import threading
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from aggregator.aggregate_files import AggregateFiles
from aggregator.auth import Authenticator, AuthInterceptor, CallerStampingSink, EdgeLimits
from aggregator.config import AggregatorConfig, load_aggregator_config
from aggregator.core.jobs import Jobs
from aggregator.core.secagg_session import AggregatorCredentials
from aggregator.edge.servicer import ConsortiumService
from aggregator.keyring import PublicKeyring
from aggregator.limits import StreamLimiter, StreamWatchdog
from aggregator.metrics import AggregatorMetrics
from aggregator.pinning import IdentityPins
from aggregator.store import StateStore
from audit.events import EventSink, LogSink
from audit.log import AuditLog, AuditSink
from crypto.pki import Identity, certificate_fingerprint, load_certificate, load_private_key
from policies.schema import PolicyFile
from protocol import cipherfed_pb2_grpc as pbg
from protocol.version import __version__
from protocol.vocabulary import JobStatus


class AggregatorServer:
    def __init__(self, config: AggregatorConfig, events: EventSink | None = None) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.events: EventSink = CallerStampingSink(events or _audit_sink(config))
        self.metrics = AggregatorMetrics() if config.metrics_listen else None
        if self.metrics is not None:
            self.events = self.metrics.observe(self.events)
        self.store = StateStore(config.state_dir / "aggregator.sqlite")
        self.keyring = PublicKeyring(config.keys_dir, self.store.all_public_contexts())
        self.events.record(
            "public_contexts_loaded",
            "aggregator",
            fingerprints=self.keyring.fingerprints(),
            unloadable=self.keyring.unloadable[:20],
        )
        policy = PolicyFile(config.consortium_policy, self._on_policy_reload) if config.consortium_policy else None
        self.engine = Jobs(
            self.store,
            AggregateFiles(config.state_dir / "aggregates"),
            self.keyring,
            config.state_dir,
            self.events,
            config.min_silos_per_aggregate,
            policy,
            max_update_values=config.max_update_values,
            allow_plaintext=config.allow_plaintext_jobs,
            allowed_factories=tuple(config.allowed_factories),
            consortium=config.consortium,
            credentials=AggregatorCredentials(load_certificate(config.tls.cert), load_private_key(config.tls.key)),
        )
        self.auth = Authenticator(config.tls.ca, config.tls.crl)
        if self.metrics is not None:
            self.metrics.watch(lambda: len(self.store.jobs(JobStatus.RUNNING)), self.auth.presence.last_polls)
        own_fingerprint = certificate_fingerprint(load_certificate(config.tls.cert))
        pins = IdentityPins(self.store, policy, own_fingerprint, self.auth.revocation, self._on_pin)
        self.watchdog = StreamWatchdog()
        limits = EdgeLimits(
            StreamLimiter(config.max_streams_per_identity, config.max_streams),
            self.watchdog,
            # streams and long polls get their own threads, so however many are held, unary calls
            # (status, submit, metrics) still find one; a few extra threads serve quick refusals
            futures.ThreadPoolExecutor(max_workers=config.max_streams + 8, thread_name_prefix="stream"),
            config.stream_idle_timeout_s,
            config.max_stream_s,
        )
        interceptor = AuthInterceptor(self.auth, self._on_refusal, pins, limits)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
            interceptors=[interceptor],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # explicit, not grpc's default: the largest message read into memory at once
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
            ],
            # beyond this many calls in flight, new ones are refused (RESOURCE_EXHAUSTED), not queued
            maximum_concurrent_rpcs=config.max_workers + config.max_streams + 8 + config.max_queued_rpcs,
        )
        pbg.add_ConsortiumServicer_to_server(
            ConsortiumService(
                self.engine, self.auth, self.events, config.consortium, config.max_send_bytes, config.max_send_messages
            ),
            self.server,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        credentials = grpc.ssl_server_credentials(
            [(config.tls.key.read_bytes(), config.tls.cert.read_bytes())],
            root_certificates=config.tls.ca.read_bytes(),
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port(config.listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        self._stop = threading.Event()
        self.metrics_port: int | None = None
        self._ticker = threading.Thread(target=self._tick_loop, name="deadline-ticker", daemon=True)

    def _on_policy_reload(self, ok: bool, message: str) -> None:
        self.events.record(
            "consortium_policy_reloaded" if ok else "consortium_policy_refused", "aggregator", message=message
        )

    def _on_refusal(self, caller: str, method: str, reason: str, certificate: dict[str, str]) -> None:
        details: dict[str, Any] = {"method": method, "reason": reason, **certificate}
        self.events.record("rpc_refused", caller or "unknown", **details)

    def _on_pin(self, event: str, ident: Identity, details: dict[str, Any]) -> None:
        self.events.record(event, ident.name, **details)

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_s):
            try:
                self.engine.tick()
            except Exception as exc:  # a bug in one tick must not stop deadlines for good
                self.events.record("tick_failed", "aggregator", error=repr(exc))

    def start(self) -> int:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set("cipherfed.v1.Consortium", health_pb2.HealthCheckResponse.SERVING)
        self._ticker.start()
        self.metrics_port = self.metrics.serve(self.config.metrics_listen or "") if self.metrics else None
        if self.config.port_file:
            tmp = Path(str(self.config.port_file) + ".tmp")
            tmp.write_text(str(self.port))
            tmp.replace(self.config.port_file)
        own_cert = load_certificate(self.config.tls.cert)
        self.events.record(
            "aggregator_started",
            "aggregator",
            port=self.port,
            version=__version__,
            consortium=self.config.consortium,
            cert_fingerprint=certificate_fingerprint(own_cert),
            metrics_port=self.metrics_port,
        )
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        self._stop.set()
        self.watchdog.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.metrics is not None:
            self.metrics.stop()
        self.events.record("aggregator_stopped", "aggregator")
        self.store.close()


def _audit_sink(config: AggregatorConfig) -> EventSink:
    if config.audit_log is None:
        return LogSink("cipherfed.aggregator")
    log = AuditLog(config.audit_log, load_private_key(config.tls.key), load_certificate(config.tls.cert), __version__)
    return AuditSink(log, "cipherfed.aggregator")


def run(config_path: Path) -> int:
    """``cipherfed aggregator start``: serve until SIGTERM or SIGINT."""
    server = AggregatorServer(load_aggregator_config(config_path))
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = server.start()
    print(f"aggregator listening on port {port} (mTLS); Ctrl-C to stop", flush=True)
    if server.metrics_port is not None:
        print(f"Prometheus metrics on http://{server.config.metrics_listen}/metrics (plain HTTP)", flush=True)
    done.wait()
    server.stop()
    return 0
