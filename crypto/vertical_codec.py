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
import tenseal.sealapi as seal

from crypto.errors import CiphertextError
from crypto.seal_io import load_ciphertext, save_bytes

PLAIN_SLOTS = 4096
SEAL_MAGIC = b"\x5e\xa1"  # a raw SEAL serialization (little-endian 0xA15E); TenSEAL's starts with a protobuf tag


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
        """Real values of TenSEAL vectors, or of raw SEAL ciphertexts from :meth:`products`."""
        if self.context is None:
            return np.concatenate([np.frombuffer(c, dtype="<f8") for c in chunks])
        return np.concatenate(
            [self._decode(c).real if c[:2] == SEAL_MAGIC else np.asarray(self._load(c).decrypt()) for c in chunks]
        )

    def check_part(self, data: bytes) -> None:
        """Load one chunk of a summand as it arrives: a malformed part is its sender's error, refused to it.

        Raises ``CiphertextError`` unless ``data`` is a vector under this job's key (or, unencrypted, a
        whole number of finite little-endian doubles) of at most one chunk's slots.
        """
        if self.context is None:
            if len(data) % 8 or len(data) // 8 > self.slots or not np.isfinite(np.frombuffer(data, "<f8")).all():
                raise CiphertextError(f"a part of {len(data)} bytes is not at most {self.slots} finite doubles")
            return
        size = self._load(data).size()
        if size > self.slots:
            raise CiphertextError(f"a part of {size} slots; at most {self.slots}")

    def add(self, parts: Sequence[Sequence[bytes]]) -> list[bytes]:
        """Sum several encrypted vectors chunk by chunk (the aggregator's job).

        Raises ``CiphertextError`` if the parts do not add up (different chunk counts or sizes).
        """
        try:
            return self._add(parts)
        except CiphertextError:
            raise
        except Exception as exc:  # zip's ValueError, numpy's broadcast error, TenSEAL's C++ errors
            raise CiphertextError(f"the parts do not add up (chunk counts or sizes differ): {exc}") from None

    def _add(self, parts: Sequence[Sequence[bytes]]) -> list[bytes]:
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
        """Loaded residual times a real plaintext vector, plus a complex mask (one multiplication level).

        CKKS slots are complex: a crafted residual with an imaginary part i*t turns each product's
        imaginary part into t*x, so the mask must cover both parts (``mask`` is complex; its imaginary
        part is ignored in a plaintext run, which has no imaginary channel). The mask is added as a
        fresh public-key encryption, which also re-randomizes the result: its second polynomial would
        otherwise be a deterministic function of the active party's ciphertext and this party's
        plaintext, which a crafted ciphertext reads back. Encrypted results are raw SEAL ciphertexts
        (TenSEAL's vectors have no complex values); :meth:`decrypt_products` reads them.
        """
        out = []
        for i, v in enumerate(loaded):
            lo, hi = i * self.slots, (i + 1) * self.slots
            p, m = plain[lo:hi], mask[lo:hi]
            if self.context is None:
                out.append((v[: len(p)] * p + m.real).astype("<f8").tobytes())
            else:
                out.append(self._product(v.ciphertext()[0], p, m))
        return out

    def _product(self, ciphertext: Any, plain: np.ndarray, mask: np.ndarray) -> bytes:
        assert self.context is not None
        sc = self.context.seal_context().data
        encoder, evaluator = seal.CKKSEncoder(sc), seal.Evaluator(sc)
        encoded = seal.Plaintext()
        encoder.encode(plain.tolist(), ciphertext.parms_id(), self.context.global_scale, encoded)
        evaluator.multiply_plain_inplace(ciphertext, encoded)
        evaluator.rescale_to_next_inplace(ciphertext)
        masked, noise = seal.Plaintext(), seal.Ciphertext()
        encoder.encode(mask.tolist(), ciphertext.parms_id(), ciphertext.scale, masked)
        seal.Encryptor(sc, self.context.public_key().data).encrypt(masked, noise)
        evaluator.add_inplace(ciphertext, noise)
        return save_bytes(ciphertext)

    def decrypt_products(self, chunks: Sequence[bytes]) -> np.ndarray:
        """The active party's view of :meth:`products`: complex slot values (real in a plaintext run)."""
        if self.context is None:
            return self.decrypt(chunks).astype(np.complex128)
        return np.concatenate([self._decode(c) for c in chunks])

    def _decode(self, chunk: bytes) -> np.ndarray:
        assert self.context is not None
        sc = self.context.seal_context().data
        plain = seal.Plaintext()
        seal.Decryptor(sc, self.context.secret_key().data).decrypt(load_ciphertext(sc, chunk), plain)
        return np.asarray(seal.CKKSEncoder(sc).decode_complex(plain))

    def multiply_add(self, chunks: Sequence[bytes], plain: np.ndarray, mask: np.ndarray) -> list[bytes]:
        """Encrypted vector times a plaintext vector, plus a (real or complex) mask; see :meth:`products`."""
        return self.products(self.load_residual(chunks, len(plain)), plain, np.asarray(mask, dtype=np.complex128))


def tile(residual: np.ndarray, columns: int) -> np.ndarray:
    """The residual repeated once per feature column: [d, d, ..., d]."""
    return np.tile(residual, columns)


def columns_side_by_side(x_batch: np.ndarray) -> np.ndarray:
    """A batch's feature columns laid one after another: [x[:, 0], x[:, 1], ...]."""
    return np.ascontiguousarray(x_batch.T).ravel()


def segment_sums(values: np.ndarray, columns: int, batch: int) -> np.ndarray:
    """Per-column sums of a decrypted [d*x0 + r0, d*x1 + r1, ...] layout."""
    return values[: columns * batch].reshape(columns, batch).sum(axis=1)
