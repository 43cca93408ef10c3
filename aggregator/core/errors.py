"""Domain errors: a request the aggregator will not carry out, and a reason the caller can act on.

Each class names one kind of refusal; the gRPC edge maps each to one status code in one table
(``aggregator.edge.status``). The process and every round go on undisturbed after any of them.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal with a message the caller can act on (field, reason, what to do next)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request itself is malformed or out of bounds."""


class NotFound(DomainError):
    """It names a job, round or scope that does not exist here."""


class AlreadyExists(DomainError):
    """It would repeat something already done differently (a second upload, a changed report)."""


class Forbidden(DomainError):
    """The caller may not do this (not a participant, refused by policy, a bad signature)."""


class PreconditionFailed(DomainError):
    """The request is well formed but the state does not allow it now (closed round, ended job)."""


class ResourceExhausted(DomainError):
    """The request exceeds a bound on work or size that this aggregator sets."""


class Aborted(DomainError):
    """An upload in flight was cancelled by the round (it closed before the upload completed)."""


class Cancelled(DomainError):
    """The caller went away before finishing."""
