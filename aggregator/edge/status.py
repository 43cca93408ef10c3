"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from aggregator.core import errors
from crypto.errors import CryptoError

STATUS_OF: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status and message a refusal is sent with; None for an exception that is not a refusal.

    Bad cryptographic input that reaches the edge (a malformed key export, ciphertext or manifest)
    is the caller's error, not ours: INVALID_ARGUMENT with its reason."""
    if isinstance(exc, errors.DomainError):
        return STATUS_OF[type(exc)], exc.message
    if isinstance(exc, CryptoError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return None
