"""Errors of secure aggregation.

Every refusal is a typed error with a message naming what was wrong and what to do next, so the
caller (silo node or aggregator) can audit it and answer with a precise status instead of crashing.
"""

from crypto.errors import CryptoError


class SecAggError(CryptoError):
    """Base of every secure-aggregation refusal."""


class SecAggPolicyError(SecAggError):
    """A (threshold, participants, graph) combination that would not protect or could not finish."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"secure aggregation policy field {field!r}: {reason}")
        self.field = field
        self.reason = reason


class EncodingError(SecAggError):
    """Bytes that are not a well-formed canonical secure-aggregation message."""


class AdvertisementError(SecAggError):
    """A key advertisement that is unsigned, signed by someone else, for another round, or reused."""


class ShareTransportError(SecAggError):
    """An encrypted share that does not open for this recipient in this round (tampered, misrouted, replayed)."""


class ReconstructionError(SecAggError):
    """Too few or inconsistent Shamir shares: the secret cannot be recovered."""


class UnmaskRefused(SecAggError):
    """A surviving silo refuses to answer an unmasking request; the reason is in the message."""


class BothSharesRefused(UnmaskRefused):
    """The request would reveal both the self-mask share and the pairwise-key share of one silo."""


class SplitViewRefused(UnmaskRefused):
    """A second, different contributor set for a round this silo has already answered for."""


class NotEnoughSurvivors(SecAggError):
    """Fewer than the threshold of silos survived: nothing can (or may) be unmasked."""
