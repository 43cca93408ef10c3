"""Closed rounds' encrypted sums on disk: written atomically, streamed back chunk by chunk."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from crypto.packing import Manifest
from protocol import cipherfed_pb2 as pb
from protocol.messages import manifest_from_proto, manifest_to_proto

MAGIC = b"CFAGG1\n"


def write_aggregate(path: Path, manifest: Manifest, chunks: Sequence[bytes]) -> int:
    """Write to a temporary file, fsync, then rename: a crash leaves the old state or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    header = manifest_to_proto(manifest).SerializeToString()
    total = 0
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack(">I", len(header)) + header)
        for chunk in chunks:
            f.write(struct.pack(">I", len(chunk)))
            f.write(chunk)
            total += len(chunk)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return total


def read_aggregate(path: Path) -> tuple[Manifest, Iterator[bytes]]:
    f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    if f.read(len(MAGIC)) != MAGIC:
        f.close()
        raise ValueError(f"{path} is not an aggregate file")
    (n,) = struct.unpack(">I", f.read(4))
    message = pb.Manifest()
    message.ParseFromString(f.read(n))
    manifest = manifest_from_proto(message)

    def chunks() -> Iterator[bytes]:
        with f:
            for _ in range(manifest.chunk_count):
                (length,) = struct.unpack(">I", f.read(4))
                yield f.read(length)

    return manifest, chunks()
