"""The aggregator's certificate as actually presented in a TLS handshake.

Site policies pin aggregators by certificate fingerprint. gRPC does not hand the server's
certificate to a Python client, so the node performs one mutual-TLS handshake of its own with the
same CA and client certificate and reads the peer certificate from it — what the server presents,
not anything the server says about itself.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from protocol.channel import TlsFiles


def aggregator_certificate(
    address: str, tls: TlsFiles, server_name: str | None = None, timeout: float = 10.0
) -> x509.Certificate:
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name or host.strip("[]")) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the aggregator presented no certificate")
    return x509.load_der_x509_certificate(der)
