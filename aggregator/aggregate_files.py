"""Closed rounds' encrypted sums on disk: written atomically, streamed back chunk by chunk.

The format is ``MAGIC`` then frames (``protocol.framing``): the serialized manifest, then every
ciphertext chunk. This module is the ``AggregateArchive`` of the core (``core.store_contract``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from crypto.packing import Manifest
from protocol import cipherfed_pb2 as pb
from protocol.framing import FramingError, open_framed_file, read_frame, read_frames, write_framed_file
from protocol.messages import manifest_from_proto, manifest_to_proto

MAGIC = b"CFAGG1\n"


def write_aggregate(path: Path, manifest: Manifest, chunks: Sequence[bytes]) -> int:
    """Write to a temporary file, fsync, then rename: a crash leaves the old state or the new one.
    Returns the ciphertext bytes written (without the header)."""
    header = manifest_to_proto(manifest).SerializeToString()
    write_framed_file(path, [header, *chunks], magic=MAGIC)
    return sum(len(chunk) for chunk in chunks)


def read_aggregate(path: Path) -> tuple[Manifest, Iterator[bytes]]:
    source = open_framed_file(path, MAGIC)
    header = read_frame(source)
    if header is None:
        source.close()
        raise FramingError(f"{path} holds no manifest")
    message = pb.Manifest()
    message.ParseFromString(header)
    manifest = manifest_from_proto(message)

    def chunks() -> Iterator[bytes]:
        with source:
            yield from read_frames(source, manifest.chunk_count)

    return manifest, chunks()


class AggregateFiles:
    """One file per released round under ``root/<job>/round-NNNNN.agg``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, job_id: str, round_index: int, manifest: Manifest, chunks: Sequence[bytes]) -> tuple[str, int]:
        path = self.root / job_id / f"round-{round_index:05d}.agg"
        return str(path), write_aggregate(path, manifest, chunks)

    def read(self, where: str) -> tuple[Manifest, Iterator[bytes]]:
        return read_aggregate(Path(where))
