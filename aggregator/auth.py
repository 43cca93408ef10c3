"""Who is calling, and may they? Identity and role come only from the verified client certificate.

gRPC has already checked the chain during the TLS handshake (``require_client_auth``); here we
read the peer certificate, check it against the revocation list (reloaded when the file changes,
so `ca revoke` takes effect without a restart) and authorize the RPC by the certificate's role.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509

from aggregator.members import Presence
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

RefusalHook = Callable[[str, str, str], None]  # (caller or "", method, reason)


class Authenticator:
    def __init__(self, ca_cert_path: Path, crl_path: Path | None) -> None:
        self.ca_cert = pki.load_certificate(ca_cert_path)
        self.revocation = pki.RevocationList(crl_path, self.ca_cert)
        self._cache: dict[bytes, pki.Identity] = {}
        self.presence = Presence()  # last authenticated call per certificate (console, metrics)
        self._lock = threading.Lock()

    def identity(self, context: grpc.ServicerContext) -> pki.Identity:
        """The caller's verified identity; raises PKIError when there is none or it is revoked."""
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
                f"certificate of {ident.name} expired at {ident.not_after:%Y-%m-%d %H:%M} UTC"
            )
        if self.revocation.is_revoked(ident.serial):
            raise RevokedCertificateError(f"certificate serial {ident.serial:x} ({ident.name}) is revoked")
        return ident

    def certificate(self, context: grpc.ServicerContext) -> x509.Certificate:
        return x509.load_pem_x509_certificate(context.auth_context()["x509_pem_cert"][0])


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses every RPC whose caller's role is not allowed for it, before the handler runs."""

    def __init__(self, auth: Authenticator, on_refusal: RefusalHook | None = None) -> None:
        self._auth = auth
        self._on_refusal = on_refusal

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        allowed = RPC_ROLES.get(method)

        def check(context: grpc.ServicerContext) -> None:
            try:
                ident = self._auth.identity(context)
            except PKIError as exc:
                self._refuse(context, "", method, grpc.StatusCode.UNAUTHENTICATED, str(exc))
                return
            if allowed is None or ident.role not in allowed:
                need = " or ".join(sorted(allowed)) if allowed else "nobody"
                reason = str(WrongRoleError(f"{ident.name} has role {ident.role!r}; {method} needs {need}"))
                self._refuse(context, ident.name, method, grpc.StatusCode.PERMISSION_DENIED, reason)
                return
            self._auth.presence.saw(ident, method)

        return _wrap(handler, check)

    def _refuse(
        self, context: grpc.ServicerContext, caller: str, method: str, code: grpc.StatusCode, reason: str
    ) -> None:
        if self._on_refusal is not None:
            self._on_refusal(caller, method, reason)
        context.abort(code, reason)


def _wrap(handler: Any, check: Callable[[grpc.ServicerContext], None]) -> Any:
    if handler.unary_unary:
        inner_uu = handler.unary_unary

        def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream:
        inner_us = handler.unary_stream

        def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            yield from inner_us(request, context)

        return grpc.unary_stream_rpc_method_handler(
            unary_stream, handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary:
        inner_su = handler.stream_unary

        def stream_unary(requests: Any, context: grpc.ServicerContext) -> Any:
            check(context)
            return inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, handler.request_deserializer, handler.response_serializer
        )
    inner_ss = handler.stream_stream

    def stream_stream(requests: Any, context: grpc.ServicerContext) -> Any:
        check(context)
        yield from inner_ss(requests, context)

    return grpc.stream_stream_rpc_method_handler(
        stream_stream, handler.request_deserializer, handler.response_serializer
    )
