"""Vectors for the vertical protocol: CKKS-encrypted (profile ``vertical``) or plaintext (``none``).

The same protocol code runs both ways, so the plaintext comparison run measures exactly the cost of
encryption. Encrypted vectors use TenSEAL's public-key CKKS: passive parties and the aggregator hold
the public context only; the active party, which generated the key set, decrypts. No rotations are
used anywhere (no Galois keys): a gradient is one ciphertext-plaintext multiplication of the
residual tiled across the feature columns, plus a mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenseal as ts

from crypto.errors import CiphertextError

PLAIN_SLOTS = 4096


class VectorCodec:
    def __init__(self, context: ts.Context | None) -> None:
        self.context = context

    @property
    def encrypted(self) -> bool:
        return self.context is not None

    @property
    def slots(self) -> int:
        return PLAIN_SLOTS if self.context is None else 4096  # N/2 for N = 8192

    def encrypt(self, values: np.ndarray) -> list[bytes]:
        values = np.asarray(values, dtype=np.float64)
        out = []
        for start in range(0, max(len(values), 1), self.slots):
            piece = values[start : start + self.slots]
            if self.context is None:
                out.append(piece.astype("<f8").tobytes())
            else:
                out.append(ts.ckks_vector(self.context, piece.tolist()).serialize())
        return out

    def _load(self, data: bytes) -> ts.CKKSVector:
        assert self.context is not None
        try:
            return ts.ckks_vector_from(self.context, data)
        except Exception as exc:  # TenSEAL raises plain exceptions from C++
            raise CiphertextError(f"not a ciphertext under this job's key: {exc}") from None

    def decrypt(self, chunks: Sequence[bytes]) -> np.ndarray:
        if self.context is None:
            return np.concatenate([np.frombuffer(c, dtype="<f8") for c in chunks])
        return np.concatenate([np.asarray(self._load(c).decrypt()) for c in chunks])

    def add(self, parts: Sequence[Sequence[bytes]]) -> list[bytes]:
        """Sum several encrypted vectors chunk by chunk (the aggregator's job)."""
        summed = []
        for chunk_group in zip(*parts, strict=True):
            if self.context is None:
                total = np.sum([np.frombuffer(c, dtype="<f8") for c in chunk_group], axis=0)
                summed.append(total.astype("<f8").tobytes())
                continue
            acc = self._load(chunk_group[0])
            for c in chunk_group[1:]:
                acc.add_(self._load(c))
            summed.append(acc.serialize())
        return summed

    def load_residual(self, chunks: Sequence[bytes], length: int) -> list[Any]:
        """The active party's tiled residual, checked before any product is computed from it.

        A malicious active party holds the secret key and can craft any ciphertext: a scale other
        than the context's would let it amplify the products beyond the value range (and shrink
        the mask's resolution), so only fresh-looking ciphertexts of the expected shape are used.
        """
        expected = max(1, -(-length // self.slots))
        if len(chunks) != expected:
            raise CiphertextError(f"residual has {len(chunks)} chunks; {expected} expected for {length} values")
        loaded: list[Any] = []
        for i, chunk in enumerate(chunks):
            size = min(self.slots, length - i * self.slots)
            if self.context is None:
                values = np.frombuffer(chunk, dtype="<f8")
                if len(values) != size or not np.isfinite(values).all():
                    raise CiphertextError(f"residual chunk {i}: {len(values)} values ({size} expected) or not finite")
                loaded.append(values)
                continue
            vector = self._load(chunk)
            ciphertext = vector.ciphertext()[0]
            if vector.size() != size or ciphertext.size() != 2:
                raise CiphertextError(f"residual chunk {i}: {vector.size()} slots ({size} expected) or not 2 polys")
            if not math.isclose(ciphertext.scale, self.context.global_scale, rel_tol=1e-9):
                raise CiphertextError(
                    f"residual chunk {i}: scale 2^{math.log2(ciphertext.scale):.1f} is not the job's "
                    f"2^{math.log2(self.context.global_scale):.1f}"
                )
            loaded.append(vector)
        return loaded

    def products(self, loaded: Sequence[Any], plain: np.ndarray, mask: np.ndarray) -> list[bytes]:
        """Loaded residual times a plaintext vector, plus a mask (one multiplication level).

        Encrypted, the mask is added as a fresh public-key encryption: that re-randomizes the
        result, whose second polynomial would otherwise be a deterministic function of the active
        party's ciphertext and this party's plaintext (a crafted ciphertext then reads it back).
        """
        out = []
        for i, v in enumerate(loaded):
            lo, hi = i * self.slots, (i + 1) * self.slots
            p, m = plain[lo:hi], mask[lo:hi]
            if self.context is None:
                out.append((v[: len(p)] * p + m).astype("<f8").tobytes())
            else:
                out.append((v * p.tolist() + ts.ckks_vector(self.context, m.tolist())).serialize())
        return out

    def multiply_add(self, chunks: Sequence[bytes], plain: np.ndarray, mask: np.ndarray) -> list[bytes]:
        """Encrypted vector times a plaintext vector, plus a plaintext mask (one multiplication level)."""
        return self.products(self.load_residual(chunks, len(plain)), plain, mask)


def tile(residual: np.ndarray, columns: int) -> np.ndarray:
    """The residual repeated once per feature column: [d, d, ..., d]."""
    return np.tile(residual, columns)


def columns_side_by_side(x_batch: np.ndarray) -> np.ndarray:
    """A batch's feature columns laid one after another: [x[:, 0], x[:, 1], ...]."""
    return np.ascontiguousarray(x_batch.T).ravel()


def segment_sums(values: np.ndarray, columns: int, batch: int) -> np.ndarray:
    """Per-column sums of a decrypted [d*x0 + r0, d*x1 + r1, ...] layout."""
    return values[: columns * batch].reshape(columns, batch).sum(axis=1)
