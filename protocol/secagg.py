"""Secure aggregation on the wire: the session number of a round attempt, and the roster message.

Shared by the silo (which checks every roster entry against the consortium CA before using it) and
the aggregator (which writes the roster from the adverts it received). The crypto objects a message
carries (adverts, share envelopes, statements, requests, answers) have their own encodings in
``crypto.secagg``; this module adds only what the round protocol itself needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.secagg.encoding import RoundContext, decode_fields, encode_fields
from crypto.secagg.errors import EncodingError
from crypto.secagg.unmask import RevealedSecrets
from crypto.secagg.wire import decode_revealed, encode_revealed
from protocol.jobspec import MAX_PARTICIPANTS, MAX_ROUND_RETRIES
from protocol.names import is_safe_name

ATTEMPTS_PER_ROUND = 1024  # > MAX_ROUND_RETRIES + 1 plus restarts: a round attempt's session is unique
assert ATTEMPTS_PER_ROUND > MAX_ROUND_RETRIES + 1
ROSTER_TAG = b"cipherfed-secagg-roster-v1"
UNMASKING_TAG = b"cipherfed-secagg-unmasking-v1"
ENTRY_TAG = b"cipherfed-secagg-roster-entry-v1"
MAX_CERT_PEM_BYTES = 16 << 10
MAX_ADVERT_BYTES = 1 << 10
# What a silo accepts for one message of each kind from the relay, before reading it whole.
MAX_ROSTER_BYTES = 64 + MAX_CERT_PEM_BYTES + MAX_PARTICIPANTS * (64 + 256 + MAX_CERT_PEM_BYTES + MAX_ADVERT_BYTES)
MAX_SHARES_BYTES = 4 << 10
MAX_UNMASK_MESSAGE_BYTES = 64 + MAX_PARTICIPANTS * 256  # statement or request: identities and signatures
# What travels with a masked aggregate: the roster, the statement and one 32-byte secret per member.
MAX_UNMASKING_BYTES = 64 + MAX_ROSTER_BYTES + MAX_PARTICIPANTS * 256


def session_number(round_index: int, attempt: int) -> int:
    """The relay ``seq`` and context round of one attempt of one round: keys are never reused across attempts."""
    if round_index < 0 or not 1 <= attempt < ATTEMPTS_PER_ROUND:
        raise EncodingError(f"round {round_index} attempt {attempt} has no secure-aggregation session")
    return round_index * ATTEMPTS_PER_ROUND + attempt


def round_context(consortium: str, job_id: str, round_index: int, attempt: int) -> RoundContext:
    """What every secure-aggregation message of this attempt is bound to (and signed with)."""
    return RoundContext(consortium, job_id, session_number(round_index, attempt))


@dataclass(frozen=True)
class RosterEntry:
    """One silo that advertised keys: its name, its certificate (PEM) and its signed advert (bytes)."""

    name: str
    cert_pem: bytes
    advert: bytes


@dataclass(frozen=True)
class RosterMessage:
    """The aggregator's certificate (it signs the unmasking request) and every advertised silo."""

    aggregator_pem: bytes
    entries: list[RosterEntry]


def encode_roster(message: RosterMessage) -> bytes:
    return encode_fields(
        ROSTER_TAG,
        message.aggregator_pem,
        *(encode_fields(ENTRY_TAG, e.name.encode(), e.cert_pem, e.advert) for e in message.entries),
    )


def decode_roster(data: bytes, max_entries: int = MAX_PARTICIPANTS) -> RosterMessage:
    """Entries, each bounded and named safely; anything else raises EncodingError."""
    count = 0
    offset = 0
    while offset < len(data):  # count the fields, then decode_fields checks every length exactly
        if offset + 4 > len(data):
            raise EncodingError("roster truncated")
        offset += 4 + int.from_bytes(data[offset : offset + 4], "big")
        count += 1
        if count > max_entries + 2:
            raise EncodingError(f"roster lists more than {max_entries} silos")
    if count < 2:
        raise EncodingError("roster has no aggregator certificate")
    aggregator_pem, *raw_entries = decode_fields(data, ROSTER_TAG, count - 1)
    if len(aggregator_pem) > MAX_CERT_PEM_BYTES:
        raise EncodingError("roster's aggregator certificate is over-long")
    entries = []
    for raw in raw_entries:
        name, pem, advert = decode_fields(raw, ENTRY_TAG, 3)
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise EncodingError("roster name is not UTF-8") from None
        if not is_safe_name(text) or len(pem) > MAX_CERT_PEM_BYTES or len(advert) > MAX_ADVERT_BYTES:
            raise EncodingError("roster entry has an unsafe name or an over-long certificate or advert")
        entries.append(RosterEntry(text, pem, advert))
    return RosterMessage(aggregator_pem, entries)


@dataclass(frozen=True)
class UnmaskingRecord:
    """What a masked aggregate carries: the session's roster (as the aggregator published it) and the
    secrets the unmasking revealed. A silo uses the roster it verified at agreement when it has one,
    and verifies this one against the consortium CA when it does not."""

    roster: bytes
    secrets: RevealedSecrets


def encode_unmasking(record: UnmaskingRecord) -> bytes:
    return encode_fields(UNMASKING_TAG, record.roster, encode_revealed(record.secrets))


def decode_unmasking(data: bytes, max_members: int = MAX_PARTICIPANTS) -> UnmaskingRecord:
    """Bounded before it is read; secrets for a roster of more than ``max_members`` are refused."""
    if len(data) > MAX_UNMASKING_BYTES:
        raise EncodingError(f"the unmasking record is {len(data)} bytes; at most {MAX_UNMASKING_BYTES}")
    roster, revealed = decode_fields(data, UNMASKING_TAG, 2)
    return UnmaskingRecord(roster, decode_revealed(revealed, max_members))
