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


class SecAggKind(StrEnum):
    """Relayed messages of a secure-aggregation round (horizontal jobs with ``secure_aggregation``).

    The round's ``seq`` is its session number (``protocol.secagg.session_number``). Every payload is
    signed by the party that wrote it; the aggregator relays what silos address to each other and
    cannot read it (share envelopes are AEAD-encrypted to their recipient).
    """

    ADVERT = "sa-advert"  # silo -> aggregator: its signed round keys (X25519 publics, self-seed commitment)
    ROSTER = "sa-roster"  # aggregator -> silo: every advertised silo's certificate and signed advert
    SHARES = "sa-shares"  # silo -> silo: its Shamir shares for that peer, encrypted and signed
    STATEMENT = "sa-statement"  # aggregator -> contributor: the roster split into contributors and dropped
    CONSISTENCY = "sa-consistency"  # contributor -> aggregator: its signature over that statement
    REQUEST = "sa-request"  # aggregator -> contributor: the statement, t+ signatures, the aggregator's signature
    ANSWER = "sa-answer"  # contributor -> aggregator: one share per peer (self if contributed, mask if dropped)


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
# Secure-aggregation messages a silo addresses to the aggregator, and those the aggregator writes.
SECAGG_TO_AGGREGATOR = frozenset({SecAggKind.ADVERT, SecAggKind.CONSISTENCY, SecAggKind.ANSWER})
SECAGG_FROM_AGGREGATOR = frozenset({SecAggKind.ROSTER, SecAggKind.STATEMENT, SecAggKind.REQUEST})
# The recipient name that addresses the aggregator itself in a relay message.
AGGREGATOR_RECIPIENT = "aggregator"
