"""Closed rounds' encrypted sums on disk: written atomically, streamed back chunk by chunk.

The format is ``MAGIC`` then frames (``protocol.framing``): the serialized manifest, then every
ciphertext chunk. A secure-aggregation sum, still masked, starts with ``MASKED_MAGIC`` and has one
more frame after the manifest: the unmasking record the silos remove the masks with
(``protocol.secagg.encode_unmasking``). This module is the ``AggregateArchive`` of the core
(``core.store_contract``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from crypto.packing import Manifest
from protocol import cipherfed_pb2 as pb
from protocol.framing import FramingError, open_framed_file, read_frame, read_frames, write_framed_file
from protocol.messages import manifest_from_proto, manifest_to_proto
from protocol.secagg import MAX_UNMASKING_BYTES

MAGIC = b"CFAGG1\n"
MASKED_MAGIC = b"CFAGM1\n"  # same length: the reader tells the two apart by it


class AggregateFiles:
    """One file per released round under ``root/<job>/round-NNNNN.agg``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(
        self, job_id: str, round_index: int, manifest: Manifest, chunks: Sequence[bytes], unmasking: bytes = b""
    ) -> tuple[str, int]:
        """Write to a temporary file, fsync, then rename: a crash leaves the old state or the new one.
        Returns where, and the ciphertext bytes written (without the header)."""
        path = self.root / job_id / f"round-{round_index:05d}.agg"
        header = manifest_to_proto(manifest).SerializeToString()
        if unmasking:
            write_framed_file(path, [header, unmasking, *chunks], magic=MASKED_MAGIC)
        else:
            write_framed_file(path, [header, *chunks], magic=MAGIC)
        return str(path), sum(len(chunk) for chunk in chunks)

    def read(self, where: str) -> tuple[Manifest, bytes, Iterator[bytes]]:
        """The manifest, the unmasking record (empty unless the sum is masked), and the chunks, read lazily."""
        source = open_framed_file(Path(where))
        magic = source.read(len(MAGIC))
        unmasking = b""
        try:
            if magic not in (MAGIC, MASKED_MAGIC):
                raise FramingError(f"{where} is not an aggregate file (bad magic)")
            header = read_frame(source)
            if header is None:
                raise FramingError(f"{where} holds no manifest")
            if magic == MASKED_MAGIC:
                unmasking = read_frame(source, MAX_UNMASKING_BYTES) or b""
                if not unmasking:
                    raise FramingError(f"{where} holds a masked sum without its unmasking record")
        except FramingError:
            source.close()
            raise
        message = pb.Manifest()
        message.ParseFromString(header)
        manifest = manifest_from_proto(message)

        def chunks() -> Iterator[bytes]:
            with source:
                yield from read_frames(source, manifest.chunk_count)

        return manifest, unmasking, chunks()
