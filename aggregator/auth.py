"""Who is calling, and may they? Identity and role come only from the verified client certificate.

gRPC has already checked the chain during the TLS handshake (``require_client_auth``); here we
read the peer certificate, check its validity period and the revocation list (reloaded when the
file changes, so `ca revoke` takes effect without a restart) on every call, check that this
certificate may speak for its name (``aggregator/pinning.py``) and authorize the RPC by the
certificate's role. The interceptor is the one place every RPC passes: it also applies the edge
bounds of ``aggregator/limits.py`` (request fields, streams per identity, stream deadlines) and
makes the caller's certificate known to the audit records written while the RPC runs.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from aggregator.core.errors import DomainError
from aggregator.edge.status import STATUS_OF
from aggregator.limits import Slot, StreamLimiter, StreamWatchdog, check_request, touching
from aggregator.members import Presence
from aggregator.pinning import IdentityPins, PinRefused
from audit.events import EventSink
from crypto import pki
from crypto.errors import ExpiredCertificateError, PKIError, RevokedCertificateError, WrongRoleError

SERVICE = "/cipherfed.v1.Consortium/"
SILO = frozenset({"silo"})
ADMIN = frozenset({"admin"})
READERS = frozenset({"admin", "auditor"})
ANYONE = frozenset(pki.ROLES)

RPC_ROLES: dict[str, frozenset[str]] = {
    **{
        SERVICE + m: SILO
        for m in (
            "Poll",
            "Upload",
            "DownloadAggregate",
            "ReportMetrics",
            "Decline",
            "PutKeyMaterial",
            "GetKeyMaterial",
            "Send",
            "Receive",
            "FinishJob",
        )
    },
    SERVICE + "SubmitJob": ADMIN,
    SERVICE + "AbortJob": ADMIN,
    SERVICE + "GetJobStatus": READERS,
    SERVICE + "ListJobs": READERS,
    SERVICE + "ListMembers": READERS,
    SERVICE + "ServerInfo": ANYONE,
    "/grpc.health.v1.Health/Check": ANYONE,
    "/grpc.health.v1.Health/Watch": ANYONE,
}

# RPCs that can hold a thread for long (streams, long polls): they run on their own thread pool and
# count against the per-identity stream limit. Client streams also get an idle deadline.
LONG_RPCS = frozenset(
    {SERVICE + m for m in ("Poll", "Upload", "DownloadAggregate", "Send", "Receive")} | {"/grpc.health.v1.Health/Watch"}
)
CLIENT_STREAMS = frozenset({SERVICE + "Upload", SERVICE + "Send"})

# The verified identity of the caller of the RPC being served (grpc runs every RPC in its own
# contextvars.Context, so this never leaks from one call to another).
CALLER: contextvars.ContextVar[pki.Identity | None] = contextvars.ContextVar("cipherfed_caller", default=None)


def cert_details(ident: pki.Identity) -> dict[str, str]:
    """What an audit record says about a caller's certificate, besides its name."""
    return {"actor_fingerprint": ident.fingerprint, "actor_serial": f"{ident.serial:x}"}


class CallerStampingSink:
    """The aggregator's EventSink: every record about the current caller (actor = the caller's name,
    or "unknown") carries the caller's certificate fingerprint and serial. One place, so no call
    site can forget it; the record format only gains two detail fields."""

    def __init__(self, inner: EventSink) -> None:
        self._inner = inner

    @property
    def head(self) -> str:
        return self._inner.head

    def record(
        self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **details: Any
    ) -> None:
        caller = CALLER.get()
        if caller is not None and actor in (caller.name, "unknown") and "actor_fingerprint" not in details:
            details = {**details, **cert_details(caller)}
        self._inner.record(event, actor, job=job, round=round, **details)


@dataclass
class EdgeLimits:
    """Bounds on long RPCs (see aggregator/limits.py); None in the interceptor means unbounded."""

    limiter: StreamLimiter
    watchdog: StreamWatchdog
    pool: futures.ThreadPoolExecutor
    idle_s: float
    max_stream_s: float


class Authenticator:
    def __init__(self, ca_cert_path: Path, crl_path: Path | None) -> None:
        self.ca_cert = pki.load_certificate(ca_cert_path)
        self.revocation = pki.RevocationList(crl_path, self.ca_cert)
        self._cache: dict[bytes, pki.Identity] = {}
        self.presence = Presence()  # last authenticated call per certificate (console, metrics)
        self._lock = threading.Lock()

    def identity(self, context: grpc.ServicerContext) -> pki.Identity:
        """The caller's verified identity; raises PKIError when there is none, it is revoked or it has
        expired (checked on every call: a cached identity can outlive its certificate)."""
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise PKIError("no client certificate presented")
        pem = pems[0]
        with self._lock:
            ident = self._cache.get(pem)
        if ident is None:
            cert = x509.load_pem_x509_certificate(pem)
            ident = pki.verify_certificate(cert, self.ca_cert)
            with self._lock:
                self._cache[pem] = ident
        if dt.datetime.now(dt.UTC) > ident.not_after:  # a long-lived connection outlives its certificate
            raise ExpiredCertificateError(
                f"certificate serial {ident.serial:x} ({ident.name}) expired at {ident.not_after:%Y-%m-%d %H:%M} UTC; "
                "renew it (new CSR, `cipherfed ca sign`)"
            )
        if self.revocation.is_revoked(ident.serial):
            raise RevokedCertificateError(f"certificate serial {ident.serial:x} ({ident.name}) is revoked")
        return ident

    def certificate(self, context: grpc.ServicerContext) -> x509.Certificate:
        return x509.load_pem_x509_certificate(context.auth_context()["x509_pem_cert"][0])

    def presented(self, context: grpc.ServicerContext) -> dict[str, str]:
        """Fingerprint and serial of whatever certificate was presented, even one refused."""
        try:
            cert = self.certificate(context)
        except Exception:
            return {}
        return {"actor_fingerprint": pki.certificate_fingerprint(cert), "actor_serial": f"{cert.serial_number:x}"}


RefusalHook = Callable[[str, str, str, dict[str, str]], None]  # (caller or "", method, reason, certificate)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses every RPC whose caller is not who its certificate may be, or whose role is not allowed
    for it, before the handler runs; then applies the edge bounds (fields, streams, deadlines)."""

    def __init__(
        self,
        auth: Authenticator,
        on_refusal: RefusalHook | None = None,
        pins: IdentityPins | None = None,
        limits: EdgeLimits | None = None,
    ) -> None:
        self._auth = auth
        self._on_refusal = on_refusal
        self._pins = pins
        self._limits = limits

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        allowed = RPC_ROLES.get(method)
        limits = self._limits if method in LONG_RPCS else None

        def check(context: grpc.ServicerContext, request: Any) -> Callable[[], None]:
            """Admit the call or abort it; returns what to run when the call ends."""
            try:
                ident = self._auth.identity(context)
            except PKIError as exc:
                self._refuse(context, "", method, grpc.StatusCode.UNAUTHENTICATED, str(exc))
                raise AssertionError("unreachable") from None
            CALLER.set(ident)
            if allowed is None or ident.role not in allowed:
                need = " or ".join(sorted(allowed)) if allowed else "nobody"
                reason = str(WrongRoleError(f"{ident.name} has role {ident.role!r}; {method} needs {need}"))
                self._refuse(context, ident.name, method, grpc.StatusCode.PERMISSION_DENIED, reason)
            if self._pins is not None:
                try:
                    self._pins.check(ident)
                except PinRefused as exc:
                    self._refuse(context, ident.name, method, grpc.StatusCode.PERMISSION_DENIED, str(exc))
            if request is not None:
                try:
                    check_request(request)
                except DomainError as exc:
                    self._refuse(context, ident.name, method, STATUS_OF[type(exc)], exc.message)
            self._auth.presence.saw(ident, method)
            return self._admit_long(context, ident, method, limits)

        return _wrap(handler, check, limits)

    def _admit_long(
        self, context: grpc.ServicerContext, ident: pki.Identity, method: str, limits: EdgeLimits | None
    ) -> Callable[[], None]:
        if limits is None:
            return lambda: None
        refused = limits.limiter.acquire(ident.fingerprint)
        if refused is not None:
            self._refuse(context, ident.name, method, grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        slot = Slot(limits.limiter, ident.fingerprint)
        context.add_callback(slot.release)  # also when the client goes away mid-stream

        def on_cancel(why: str) -> None:
            if self._on_refusal is not None:
                self._on_refusal(ident.name, method, why, {**cert_details(ident), "code": "CANCELLED"})

        idle = limits.idle_s if method in CLIENT_STREAMS else None
        handle = limits.watchdog.watch(context, method.rsplit("/", 1)[-1], idle, limits.max_stream_s, on_cancel)
        context.add_callback(lambda: limits.watchdog.forget(handle))
        _HANDLES.set((limits.watchdog, handle))

        def done() -> None:
            limits.watchdog.forget(handle)
            slot.release()

        return done

    def _refuse(
        self, context: grpc.ServicerContext, caller: str, method: str, code: grpc.StatusCode, reason: str
    ) -> None:
        if self._on_refusal is not None:
            self._on_refusal(caller, method, reason, self._auth.presented(context))
        context.abort(code, reason)


_HANDLES: contextvars.ContextVar[tuple[StreamWatchdog, int] | None] = contextvars.ContextVar(
    "cipherfed_stream_handle", default=None
)
Check = Callable[[grpc.ServicerContext, Any], Callable[[], None]]


def _watched(requests: Any) -> Any:
    """A client stream whose every message resets its idle deadline."""
    handle = _HANDLES.get()
    return requests if handle is None else touching(requests, handle[0], handle[1])


def _wrap(handler: Any, check: Check, limits: EdgeLimits | None) -> Any:
    pool = {"experimental_thread_pool": limits.pool} if limits is not None else {}
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            done = check(context, request)
            try:
                return inner_uu(request, context)
            finally:
                done()

        _mark(unary_unary, pool)
        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream
        if getattr(inner_us, "experimental_non_blocking", False):  # health Watch: holds no thread while idle

            def non_blocking(request: Any, context: grpc.ServicerContext, send_response_callback: Any = None) -> Any:
                check(context, request)  # its slot is released by the RPC's termination callback
                return inner_us(request, context, send_response_callback=send_response_callback)

            _mark(non_blocking, {**pool, "experimental_non_blocking": True})
            return grpc.unary_stream_rpc_method_handler(
                non_blocking, handler.request_deserializer, handler.response_serializer
            )

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            done = check(context, request)
            try:
                yield from inner_us(request, context)
            finally:
                done()

        _mark(unary_stream, pool)
        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
            done = check(context, None)
            try:
                return inner_su(_watched(requests), context)
            finally:
                done()

        _mark(stream_unary, pool)
        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
        done = check(context, None)
        try:
            yield from inner_ss(_watched(requests), context)
        finally:
            done()

    _mark(stream_stream, pool)
    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )


def _mark(behavior: Any, attributes: dict[str, Any]) -> None:
    """grpc reads these attributes off the behavior: which thread pool runs it, whether it blocks."""
    for name, value in attributes.items():
        setattr(behavior, name, value)
