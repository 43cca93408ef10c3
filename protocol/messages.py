"""Conversions between crypto objects and their wire form, and the chunk streams."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from crypto.errors import ManifestError
from crypto.packing import Layout, Manifest
from protocol import cipherfed_pb2 as pb

# Largest chunk message accepted: a seeded ciphertext is ~66 KB and an aggregate one ~131 KB.
MAX_CHUNK_BYTES = 1 << 20
MAX_CHUNKS = 1 << 20  # 8.6e9 values: far beyond any model, small enough to bound a manifest
# Free text a silo sends (decline reasons): the aggregator refuses more; the silo clips to fit.
MAX_REASONS = 32
MAX_REASON_CHARS = 2048


def clip_reasons(reasons: Sequence[str]) -> list[str]:
    """Reasons within the bounds the aggregator accepts, marking what was cut."""
    clipped = [r if len(r) <= MAX_REASON_CHARS else r[: MAX_REASON_CHARS - 20] + " ...[truncated]" for r in reasons]
    if len(clipped) > MAX_REASONS:
        clipped = [*clipped[: MAX_REASONS - 1], f"... and {len(clipped) - MAX_REASONS + 1} more reasons"]
    return clipped


def manifest_to_proto(manifest: Manifest) -> pb.Manifest:
    return pb.Manifest(
        profile=manifest.profile,
        fingerprint=manifest.fingerprint,
        layout_json=manifest.layout.to_json(),
        value_count=manifest.value_count,
        values_per_chunk=manifest.values_per_chunk,
        scale_bits=manifest.scale_bits,
        chunk_digests=list(manifest.chunk_digests),
        quantization=manifest.quantization,
    )


def manifest_from_proto(message: pb.Manifest) -> Manifest:
    if len(message.chunk_digests) > MAX_CHUNKS:
        raise ManifestError(f"manifest lists {len(message.chunk_digests)} chunks; at most {MAX_CHUNKS}")
    manifest = Manifest(
        message.profile,
        message.fingerprint,
        Layout.from_json(message.layout_json),
        int(message.value_count),
        int(message.values_per_chunk),
        int(message.scale_bits),
        tuple(bytes(d) for d in message.chunk_digests),
        _bounded_quantization(message.quantization),
    )
    manifest.check_consistent()
    return manifest


def upload_messages(header: pb.UploadHeader, chunks: Iterable[bytes]) -> Iterator[pb.UploadMessage]:
    yield pb.UploadMessage(header=header)
    for chunk in chunks:
        yield pb.UploadMessage(chunk=chunk)


def read_aggregate(stream: Iterable[pb.AggregateMessage]) -> tuple[pb.AggregateHeader, Manifest, list[bytes]]:
    """Collect an aggregate stream, checking it against its manifest as it arrives."""
    iterator = iter(stream)
    first = next(iterator, None)
    if first is None or not first.HasField("header"):
        raise ManifestError("aggregate stream does not start with a header")
    manifest = manifest_from_proto(first.header.manifest)
    chunks: list[bytes] = []
    for message in iterator:
        if not message.HasField("chunk") or len(chunks) >= manifest.chunk_count:
            raise ManifestError("aggregate stream holds more than its manifest announces")
        chunks.append(bytes(message.chunk))
    if len(chunks) != manifest.chunk_count:
        raise ManifestError(f"aggregate stream ended after {len(chunks)} of {manifest.chunk_count} chunks")
    return first.header, manifest, chunks


def check_digests(manifest: Manifest, chunks: Sequence[bytes]) -> None:
    from crypto.packing import chunk_digest

    for i, chunk in enumerate(chunks):
        if chunk_digest(chunk) != manifest.chunk_digests[i]:
            raise ManifestError(f"aggregate chunk {i} does not match its digest")


MAX_QUANTIZATION_CHARS = 512  # a few numbers as JSON


def _bounded_quantization(text: str) -> str:
    if len(text) > MAX_QUANTIZATION_CHARS:
        raise ManifestError(f"manifest quantization of {len(text)} characters; at most {MAX_QUANTIZATION_CHARS}")
    return str(text)
