"""Canonical encodings of secure-aggregation messages and the round context they are bound to.

Every signed or authenticated byte string is a version tag followed by length-prefixed fields, so
two different messages can never encode to the same bytes and a message for one purpose can never
be accepted for another. These encodings are frozen by tests/vectors/secagg.json.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from crypto.secagg.errors import EncodingError

MAX_FIELD_BYTES = 1 << 20
MAX_NAME_BYTES = 256
MAX_ROUND = (1 << 62) - 1
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def encode_fields(tag: bytes, *parts: bytes) -> bytes:
    """The tag, then each part as a 4-byte big-endian length and its bytes."""
    out = [struct.pack(">I", len(tag)), tag]
    for part in parts:
        if len(part) > MAX_FIELD_BYTES:
            raise EncodingError(f"field of {len(part)} bytes exceeds the {MAX_FIELD_BYTES}-byte bound")
        out.append(struct.pack(">I", len(part)))
        out.append(part)
    return b"".join(out)


def decode_fields(data: bytes, tag: bytes, count: int) -> list[bytes]:
    """Inverse of encode_fields: exactly ``count`` fields after ``tag``, nothing trailing, every length bounded."""
    parts: list[bytes] = []
    offset = 0
    for index in range(count + 1):
        if offset + 4 > len(data):
            raise EncodingError(f"message truncated at field {index}")
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if length > MAX_FIELD_BYTES or offset + length > len(data):
            raise EncodingError(f"field {index} declares {length} bytes; only {len(data) - offset} remain")
        parts.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise EncodingError(f"{len(data) - offset} trailing bytes after the last field")
    if parts[0] != tag:
        raise EncodingError(f"message tag {parts[0]!r} is not {tag!r}")
    return parts[1:]


def check_fingerprint(value: str, field: str = "fingerprint") -> str:
    """Identities are certificate fingerprints: 64 lowercase hex characters (SHA-256 of the DER cert)."""
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise EncodingError(f"{field} must be a certificate fingerprint (64 lowercase hex characters)")
    return value


def encode_identities(identities: tuple[str, ...]) -> bytes:
    """A sorted tuple of fingerprints as one field (32 raw bytes each)."""
    return b"".join(bytes.fromhex(check_fingerprint(i)) for i in identities)


def decode_identities(data: bytes) -> tuple[str, ...]:
    if len(data) % 32:
        raise EncodingError("identity list is not a whole number of 32-byte fingerprints")
    return tuple(data[i : i + 32].hex() for i in range(0, len(data), 32))


@dataclass(frozen=True)
class RoundContext:
    """What every secure-aggregation message is bound to: consortium, job and round."""

    consortium: str
    job: str
    round: int

    def __post_init__(self) -> None:
        for field in ("consortium", "job"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value or len(value.encode()) > MAX_NAME_BYTES:
                raise EncodingError(f"{field} must be a non-empty string of at most {MAX_NAME_BYTES} bytes")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or not 0 <= self.round <= MAX_ROUND:
            raise EncodingError(f"round must be an integer in [0, {MAX_ROUND}]")

    def encode(self) -> bytes:
        return encode_fields(
            b"cipherfed-secagg-context-v1", self.consortium.encode(), self.job.encode(), struct.pack(">q", self.round)
        )

    @classmethod
    def decode(cls, data: bytes) -> RoundContext:
        consortium, job, round_bytes = decode_fields(data, b"cipherfed-secagg-context-v1", 3)
        if len(round_bytes) != 8:
            raise EncodingError("round field must be 8 bytes")
        try:
            return cls(consortium.decode(), job.decode(), struct.unpack(">q", round_bytes)[0])
        except UnicodeDecodeError:
            raise EncodingError("consortium or job is not UTF-8") from None
