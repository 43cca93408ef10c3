"""Length-prefixed frames: the one byte format for every file or spool that holds a sequence of blobs.

A frame is a 4-byte big-endian length followed by that many bytes. A framed file is an optional magic
line followed by frames; it is written to a temporary file, flushed, fsynced and renamed into place,
so a crash leaves the old file or the new one and never half of one. Readers bound every length
before reading it (``max_frame``) and refuse a truncated frame instead of returning short data, so a
damaged or hostile file cannot make a reader allocate more than the bound or mistake a cut for data.

Used by the silo's upload cache and the update it keeps for a masked round's retry, and by the
aggregator's released aggregates and its per-upload spool.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

_LENGTH = struct.Struct(">I")
# Largest frame any caller of this module stores: a serialized manifest or one ciphertext chunk.
DEFAULT_MAX_FRAME = 64 << 20


class FramingError(ValueError):
    """A framed file or stream is not what it claims: bad magic, a cut frame, or an oversized length."""


def frame(data: bytes) -> bytes:
    """One frame: its length, then the bytes."""
    return _LENGTH.pack(len(data)) + data


def write_frame(out: IO[bytes], data: bytes | memoryview) -> int:
    """Append one frame; returns the bytes written. A memoryview is written as its bytes, without a copy."""
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    out.write(_LENGTH.pack(size))
    out.write(data)
    return _LENGTH.size + size


def read_frame(source: IO[bytes], max_frame: int = DEFAULT_MAX_FRAME) -> bytes | None:
    """The next frame, or None at a clean end of input. A cut or oversized frame raises FramingError."""
    prefix = source.read(_LENGTH.size)
    if not prefix:
        return None
    if len(prefix) != _LENGTH.size:
        raise FramingError("input ends inside a frame's length")
    (length,) = _LENGTH.unpack(prefix)
    if length > max_frame:
        raise FramingError(f"frame of {length} bytes exceeds the {max_frame}-byte limit")
    data = source.read(length)
    if len(data) != length:
        raise FramingError(f"input ends after {len(data)} of a frame's {length} bytes")
    return data


def read_frames(source: IO[bytes], count: int | None = None, max_frame: int = DEFAULT_MAX_FRAME) -> Iterator[bytes]:
    """Frames until the end of input, or exactly ``count`` of them (fewer raises FramingError)."""
    read = 0
    while count is None or read < count:
        data = read_frame(source, max_frame)
        if data is None:
            if count is not None:
                raise FramingError(f"input ends after {read} of {count} frames")
            return
        read += 1
        yield data


def write_framed_file(
    path: Path, frames: Iterable[bytes | memoryview], magic: bytes = b"", durable: bool = True
) -> int:
    """Write magic and frames atomically (temporary file, fsync, rename); returns the payload bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = 0
    with open(tmp, "wb") as out:
        out.write(magic)
        for data in frames:
            payload += write_frame(out, data) - _LENGTH.size
        out.flush()
        if durable:
            os.fsync(out.fileno())
    tmp.replace(path)
    return payload


def open_framed_file(path: Path, magic: bytes = b"") -> IO[bytes]:
    """Open a framed file positioned at its first frame; a wrong magic raises FramingError."""
    source = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
    if source.read(len(magic)) != magic:
        source.close()
        raise FramingError(f"{path} is not a framed file of the expected kind (bad magic)")
    return source
