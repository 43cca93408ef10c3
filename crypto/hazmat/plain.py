"""HAZMAT — the plaintext (profile ``none``) chunk codec and arithmetic: float64 values, NO encryption.

Hazardous twice over: the values are not encrypted at all (the aggregator and anyone on the path see
every contribution), and nothing here checks a chunk's length, finiteness or origin — :func:`decode`
turns any bytes into numbers. The recipes in :mod:`crypto.engine` bound and check chunks; callers
belong there only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PlainArithmetic", "decode", "encode_chunks"]


def encode_chunks(vector: np.ndarray, values_per_chunk: int) -> list[bytes]:
    """Cut ``vector`` into little-endian float64 chunks of at most ``values_per_chunk`` values."""
    return [
        np.ascontiguousarray(vector[start : start + values_per_chunk], dtype="<f8").tobytes()
        for start in range(0, vector.shape[0], values_per_chunk)
    ]


def decode(data: bytes) -> np.ndarray:
    """Bytes as little-endian float64 (a read-only view); the length must be a multiple of 8."""
    return np.frombuffer(data, dtype="<f8")


class PlainArithmetic:
    """The same interface as :class:`crypto.hazmat.ckks.SealArithmetic`, on float64 arrays."""

    def first(self, loaded: np.ndarray) -> np.ndarray:
        return np.array(loaded, dtype=np.float64)  # a writable copy: decoded chunks are read-only views

    def add_inplace(self, total: np.ndarray, loaded: np.ndarray) -> None:
        total += loaded

    def sub_inplace(self, total: np.ndarray, loaded: np.ndarray) -> None:
        total -= loaded

    def save(self, total: np.ndarray) -> bytes:
        return np.ascontiguousarray(total, dtype="<f8").tobytes()
