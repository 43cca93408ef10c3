"""HAZMAT — raw SEAL CKKS calls for profile ``sum``: packing, encrypt/decrypt, load/save/add/subtract.

Hazardous because nothing here checks anything: ``SealSecretOps`` encrypts any value (a value beyond
the contribution bound wraps silently), decrypts any ciphertext that loads under the parameters
(one encrypted under another key decrypts to noise, and its unauthenticated scale is trusted), and
``SealArithmetic`` adds whatever it is handed, verified or not. See :mod:`crypto.hazmat`; callers
belong in :mod:`crypto.engine` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import tenseal.sealapi as seal

from crypto.seal_io import load_ciphertext, save_bytes

__all__ = [
    "SealArithmetic",
    "SealSecretOps",
    "complex_pack",
    "complex_unpack_view",
]


def complex_pack(vector: np.ndarray, values_per_chunk: int) -> np.ndarray:
    """Reals (x0, x1, x2, ...) as slots (x0 + i*x1, x2 + i*x3, ...), zero-padded to whole chunks.

    This is exactly the memory layout of complex128, so a view does the packing without copies.
    """
    padded = np.zeros(-(-vector.shape[0] // values_per_chunk) * values_per_chunk)
    padded[: vector.shape[0]] = vector
    return padded.view(np.complex128)


def complex_unpack_view(reals: np.ndarray) -> np.ndarray:
    """The complex slots view of a float64 output buffer: the inverse of :func:`complex_pack`."""
    return reals.view(np.complex128)


class SealSecretOps:
    """Encoder, symmetric encryptor and decryptor of one secret key, without any check."""

    def __init__(self, context: seal.SEALContext, secret_key: seal.SecretKey) -> None:
        self._context = context
        self._encoder = seal.CKKSEncoder(context)
        self._encryptor = seal.Encryptor(context, secret_key)
        self._decryptor = seal.Decryptor(context, secret_key)

    def encrypt_packed(self, vector: np.ndarray, scale_bits: int, values_per_chunk: int) -> list[bytes]:
        """Complex-pack ``vector`` and encrypt each chunk (seeded symmetric) at scale 2^scale_bits."""
        scale = 2.0**scale_bits
        half = values_per_chunk // 2
        packed = complex_pack(vector, values_per_chunk)
        chunks: list[bytes] = []
        for start in range(0, packed.shape[0], half):
            plain = seal.Plaintext()
            self._encoder.encode(packed[start : start + half].tolist(), scale, plain)
            chunks.append(save_bytes(self._encryptor.encrypt_symmetric(plain)))
        return chunks

    def load(self, data: bytes) -> seal.Ciphertext:
        return load_ciphertext(self._context, data)

    def decrypt_each(self, ciphertexts: Iterable[seal.Ciphertext]) -> Iterator[list[complex]]:
        """Decrypt and decode each ciphertext to its complex slots, dividing by whatever scale it claims.

        One plaintext buffer per call (not per chunk: allocating one costs as much as a decode; not per
        object: one encryptor serves every job of a key, on several threads). Lists, as the binding
        returns them: assigning a list into a numpy slice is faster than converting it first.
        """
        plain = seal.Plaintext()
        for ciphertext in ciphertexts:
            self._decryptor.decrypt(ciphertext, plain)
            slots: list[complex] = self._encoder.decode_complex(plain)
            yield slots


class SealArithmetic:
    """In-place ciphertext addition and subtraction (exact modulo q), on anything that loaded."""

    def __init__(self, context: seal.SEALContext) -> None:
        self._context = context
        self._evaluator = seal.Evaluator(context)

    def load(self, data: bytes) -> seal.Ciphertext:
        return load_ciphertext(self._context, data)

    def first(self, loaded: seal.Ciphertext) -> seal.Ciphertext:
        """The running sum starts as the first ciphertext itself (no copy: later adds change it)."""
        return loaded

    def add_inplace(self, total: seal.Ciphertext, loaded: seal.Ciphertext) -> None:
        """SEAL raises RuntimeError/ValueError on mismatched parameters; the caller says which chunk."""
        self._evaluator.add_inplace(total, loaded)

    def sub_inplace(self, total: seal.Ciphertext, loaded: seal.Ciphertext) -> None:
        self._evaluator.sub_inplace(total, loaded)

    def save(self, total: seal.Ciphertext) -> bytes:
        return save_bytes(total)
