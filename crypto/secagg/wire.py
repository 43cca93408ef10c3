"""Bytes for the unmasking messages that cross the relay, and for what a silo keeps between polls.

The signed parts of each message are defined next to the message (``unmask.py``, ``keys.py``,
``transport.py``); this module only frames a message with its signature(s) for the wire and parses
it back, refusing anything malformed, over-long or trailing (``encoding.decode_fields``). A silo's
round secrets (``RoundKeys``) and the shares it holds of others (``RoundMaterial``) are persisted
with the same framing so a restarted node can still answer, exactly once, for a round it joined.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto.secagg.encoding import (
    RoundContext,
    check_fingerprint,
    decode_fields,
    decode_identities,
    encode_fields,
    encode_identities,
)
from crypto.secagg.errors import EncodingError
from crypto.secagg.graph import Graph
from crypto.secagg.keys import MAX_SIGNATURE_BYTES, RoundKeys, verify_bytes
from crypto.secagg.shamir import Share
from crypto.secagg.transport import ShareBundle
from crypto.secagg.unmask import (
    ContributorStatement,
    RevealedSecrets,
    RevealedShare,
    RoundMaterial,
    StatementSignature,
    UnmaskRequest,
    UnmaskResponse,
    _consistency_bytes,
)

SIGNATURE_TAG = b"cipherfed-secagg-wire-signature-v1"
REQUEST_TAG = b"cipherfed-secagg-wire-request-v1"
RESPONSE_TAG = b"cipherfed-secagg-wire-response-v1"
KEYS_TAG = b"cipherfed-secagg-stored-keys-v1"
MATERIAL_TAG = b"cipherfed-secagg-stored-material-v1"
GRAPH_TAG = b"cipherfed-secagg-stored-graph-v1"
REVEALED_TAG = b"cipherfed-secagg-revealed-secrets-v1"
_SHARE_BYTES = 35  # Share.to_bytes(): 2-byte x, 33-byte y
_ENTRY_BYTES = 32 + 1 + _SHARE_BYTES
MAX_HOLDERS = 4096


def _signature(data: bytes) -> bytes:
    if not data or len(data) > MAX_SIGNATURE_BYTES:
        raise EncodingError(f"a signature must be 1 to {MAX_SIGNATURE_BYTES} bytes")
    return data


def encode_signature(entry: StatementSignature) -> bytes:
    return encode_fields(SIGNATURE_TAG, bytes.fromhex(check_fingerprint(entry.signer, "signer")), entry.signature)


def decode_signature(data: bytes) -> StatementSignature:
    signer, signature = decode_fields(data, SIGNATURE_TAG, 2)
    if len(signer) != 32:
        raise EncodingError("signer must be a 32-byte certificate fingerprint")
    return StatementSignature(signer.hex(), _signature(signature))


def check_signature(statement: ContributorStatement, entry: StatementSignature, cert: x509.Certificate) -> None:
    """The relay's check of a consistency signature on arrival: by ``cert`` over this very statement.

    Every answering silo checks them again; checking on arrival lets the aggregator refuse a forged or
    stale one with a clear error (and keep waiting for the sender's real one) instead of relaying it.
    Raises AdvertisementError.
    """
    verify_bytes(cert, _consistency_bytes(statement), entry.signature, "consistency signature")


def check_response(statement: ContributorStatement, response: UnmaskResponse, cert: x509.Certificate) -> None:
    """An answer on arrival: for this session and statement, signed by ``cert`` (``unmask`` checks it again)."""
    if response.context != statement.context or response.statement_digest != statement.digest():
        raise EncodingError("the answer is for another session or contributor set than the request sent")
    verify_bytes(cert, response.signed_bytes(), response.signature, "unmask response")


def encode_request(request: UnmaskRequest) -> bytes:
    return encode_fields(
        REQUEST_TAG,
        request.statement.encode(),
        bytes.fromhex(check_fingerprint(request.aggregator, "aggregator")),
        request.signature,
        *(encode_signature(s) for s in request.consistency),
    )


def decode_request(data: bytes, max_signatures: int) -> UnmaskRequest:
    """A request with at most ``max_signatures`` consistency signatures (the roster size bounds it)."""
    count = _field_count(data, REQUEST_TAG) - 3
    if not 0 <= count <= max_signatures:
        raise EncodingError(f"request carries {count} consistency signatures; at most {max_signatures}")
    statement, aggregator, signature, *signatures = decode_fields(data, REQUEST_TAG, 3 + count)
    if len(aggregator) != 32:
        raise EncodingError("aggregator must be a 32-byte certificate fingerprint")
    return UnmaskRequest(
        ContributorStatement.decode(statement),
        aggregator.hex(),
        _signature(signature),
        tuple(decode_signature(s) for s in signatures),
    )


def encode_response(response: UnmaskResponse) -> bytes:
    entries = b"".join(
        bytes.fromhex(s.silo) + (b"S" if s.kind == "self" else b"M") + s.share.to_bytes() for s in response.shares
    )
    return encode_fields(
        RESPONSE_TAG,
        response.context.encode(),
        response.statement_digest,
        bytes.fromhex(check_fingerprint(response.responder, "responder")),
        entries,
        response.signature,
    )


def decode_response(data: bytes) -> UnmaskResponse:
    context, digest, responder, entries, signature = decode_fields(data, RESPONSE_TAG, 5)
    if len(digest) != 32 or len(responder) != 32:
        raise EncodingError("statement digest and responder must be 32 bytes each")
    if len(entries) % _ENTRY_BYTES or len(entries) // _ENTRY_BYTES > MAX_HOLDERS:
        raise EncodingError("response shares are not a whole, bounded number of entries")
    shares = []
    for offset in range(0, len(entries), _ENTRY_BYTES):
        entry = entries[offset : offset + _ENTRY_BYTES]
        kind = {b"S": "self", b"M": "mask"}.get(entry[32:33])
        if kind is None:
            raise EncodingError("a revealed share is neither a self-seed nor a mask-key share")
        shares.append(RevealedShare(entry[:32].hex(), kind, Share.from_bytes(entry[33:])))  # type: ignore[arg-type]
    return UnmaskResponse(RoundContext.decode(context), digest, responder.hex(), tuple(shares), _signature(signature))


def encode_revealed(secrets: RevealedSecrets) -> bytes:
    """The statement, then (fingerprint, 32-byte secret) entries: self seeds, then mask keys."""

    def entries(secrets_by_silo: Mapping[str, bytes]) -> bytes:
        return b"".join(bytes.fromhex(check_fingerprint(s)) + _secret(k) for s, k in sorted(secrets_by_silo.items()))

    return encode_fields(
        REVEALED_TAG, secrets.statement.encode(), entries(secrets.self_seeds), entries(secrets.mask_keys)
    )


def decode_revealed(data: bytes, max_members: int) -> RevealedSecrets:
    """Inverse of encode_revealed, for a roster of at most ``max_members`` (the job's participants)."""
    statement_raw, seeds_raw, keys_raw = decode_fields(data, REVEALED_TAG, 3)
    statement = ContributorStatement.decode(statement_raw)
    if len(statement.roster) > max_members:
        raise EncodingError(f"revealed secrets are for a roster of {len(statement.roster)}; at most {max_members}")

    def entries(raw: bytes) -> dict[str, bytes]:
        if len(raw) % 64 or len(raw) // 64 > max_members:
            raise EncodingError("revealed secrets are not a whole, bounded number of 64-byte entries")
        out = {raw[i : i + 32].hex(): raw[i + 32 : i + 64] for i in range(0, len(raw), 64)}
        if len(out) != len(raw) // 64:
            raise EncodingError("revealed secrets name one silo twice")
        return out

    return RevealedSecrets(statement, entries(seeds_raw), entries(keys_raw))


def _secret(value: bytes) -> bytes:
    if len(value) != 32:
        raise EncodingError("a revealed secret must be 32 bytes")
    return value


def _field_count(data: bytes, tag: bytes) -> int:
    """How many fields follow ``tag`` (walks the lengths; decode_fields then checks everything)."""
    offset, fields = 0, -1
    while offset < len(data):
        if offset + 4 > len(data):
            raise EncodingError("message truncated")
        length = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4 + length
        fields += 1
        if fields > MAX_HOLDERS + 8:
            raise EncodingError("message has too many fields")
    return fields


# ---------------------------------------------------------------- what a silo keeps (secret files)
def encode_keys(keys: RoundKeys) -> bytes:
    share_private = keys.share_private.private_bytes_raw()
    return encode_fields(KEYS_TAG, keys.mask_private_bytes(), share_private, keys.self_seed)


def decode_keys(data: bytes) -> RoundKeys:
    mask, share, seed = decode_fields(data, KEYS_TAG, 3)
    if len(mask) != 32 or len(share) != 32 or len(seed) != 32:
        raise EncodingError("stored round keys must be three 32-byte values")
    return RoundKeys(X25519PrivateKey.from_private_bytes(mask), X25519PrivateKey.from_private_bytes(share), seed)


def encode_material(material: RoundMaterial) -> bytes:
    members = tuple(sorted(material.graph))
    graph = encode_fields(GRAPH_TAG, *(encode_identities(tuple(sorted(material.graph[m]))) for m in members))
    bundles = b"".join(
        bytes.fromhex(b.sender) + b.self_share.to_bytes() + b.mask_share.to_bytes()
        for _, b in sorted(material.bundles.items())
    )
    return encode_fields(
        MATERIAL_TAG,
        material.context.encode(),
        material.threshold.to_bytes(4, "big"),
        encode_identities(members),
        graph,
        encode_identities(tuple(sorted(material.mask_set))),
        bundles,
    )


def decode_material(data: bytes) -> RoundMaterial:
    context, threshold, members_raw, graph_raw, mask_raw, bundles_raw = decode_fields(data, MATERIAL_TAG, 6)
    members = decode_identities(members_raw)
    if len(members) > MAX_HOLDERS:
        raise EncodingError("stored roster is too large")
    rows = decode_fields(graph_raw, GRAPH_TAG, len(members))
    graph: Graph = {m: frozenset(decode_identities(r)) for m, r in zip(members, rows, strict=True)}
    size = 32 + 2 * _SHARE_BYTES
    if len(bundles_raw) % size:
        raise EncodingError("stored shares are not a whole number of bundles")
    bundles = {}
    for offset in range(0, len(bundles_raw), size):
        raw = bundles_raw[offset : offset + size]
        sender = raw[:32].hex()
        bundles[sender] = ShareBundle(
            sender, Share.from_bytes(raw[32 : 32 + _SHARE_BYTES]), Share.from_bytes(raw[32 + _SHARE_BYTES :])
        )
    return RoundMaterial(
        RoundContext.decode(context),
        int.from_bytes(threshold, "big"),
        graph,
        frozenset(decode_identities(mask_raw)),
        bundles,
    )
