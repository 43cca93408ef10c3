"""The one vocabulary of the protocol: job and round statuses, and the kinds of relayed messages.

Silo nodes, the aggregator, the CLI and the benchmarks read and write these words; each is spelled
here and nowhere else, so a status cannot drift between the party that writes it and the party that
branches on it. They are ``StrEnum`` members: they compare equal to, and serialize as, the plain
strings that travel in protobuf ``string`` fields and SQLite columns, so the wire and the stored state
are unchanged by using them.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        """A job in a terminal status never runs again."""
        return self is not JobStatus.RUNNING


TERMINAL_JOB_STATUSES = frozenset(s for s in JobStatus if s.terminal)


class RoundStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    # Vertical jobs have no aggregation rounds; their status shows the active party's epochs as trained.
    TRAINED = "trained"


class RelayKind(StrEnum):
    """What a relayed message of a vertical job carries (a short tag on the wire, stored as is)."""

    PARTIAL_SCORES = "u"  # passive -> aggregator: Enc(X_k w_k) for a training step
    PREDICTION_SCORES = "p"  # passive -> aggregator: Enc(X_k w_k) for a prediction request
    SUMMED_SCORES = "U"  # aggregator -> active: the sum of the passives' training partial scores
    SUMMED_PREDICTIONS = "P"  # aggregator -> active: the sum of the passives' prediction scores
    RESIDUALS = "d"  # active -> passive: Enc(residuals), tiled across the slots
    MASKED_PRODUCTS = "g"  # passive -> active: Enc(residual x feature + mask)
    DECOY_PRODUCTS = "decoy"  # passive -> active: Enc(residual x secret decoy + mask), the probe of the residual
    MASKED_SUMS = "m"  # active -> passive: decrypted masked decoy totals, then masked per-column sums
    PROBE_COMMITMENT = "commit"  # passive -> active: SHA-256 over the probe's context and seed, with the decoys
    PROBE_SEED = "seed"  # passive -> active: the probe's seed, revealed after the batch's gradient exchange


# Partial scores are addressed to the aggregator, which forwards their sum under the summed kind.
SUMMED_KIND = {
    RelayKind.PARTIAL_SCORES: RelayKind.SUMMED_SCORES,
    RelayKind.PREDICTION_SCORES: RelayKind.SUMMED_PREDICTIONS,
}
# The kinds whose payloads are CKKS ciphertexts (under the active party's key) when the job encrypts.
ENCRYPTED_RELAY_KINDS = frozenset(
    {
        RelayKind.PARTIAL_SCORES,
        RelayKind.PREDICTION_SCORES,
        RelayKind.RESIDUALS,
        RelayKind.MASKED_PRODUCTS,
        RelayKind.DECOY_PRODUCTS,
    }
)
# The recipient name that addresses the aggregator itself in a relay message.
AGGREGATOR_RECIPIENT = "aggregator"
