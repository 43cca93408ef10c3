"""The only SEAL calls of the ``compact`` profile: reals in, seeded ciphertext bytes out, and back.

Kept in one small class, with no knowledge of lanes, weights or quantization, so that it can move
unchanged into a lower "hazmat" layer. It encodes N reals per ciphertext with complex packing
(real k and real k+1 share one slot as re + i*im) at a caller-chosen scale, encrypts with seeded
symmetric encryption (the second polynomial travels as a seed, halving the upload), and decrypts
and decodes back to N float64 reals. Range checks belong to the caller: this class assumes every
|real| * 2^scale_bits * sqrt(2) stays below half the data prime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal.sealapi as seal

from crypto.errors import CiphertextError
from crypto.keys import SecretKeySet
from crypto.seal_io import load_ciphertext, save_bytes


class SeededRealCodec:
    """Encrypt/decrypt whole ciphertexts of N reals under one secret key (silo side only)."""

    def __init__(self, keys: SecretKeySet) -> None:
        if keys.profile.engine != "seal-seeded" or keys.secret_key is None:
            raise CiphertextError(f"profile {keys.profile.name!r} has no seeded-symmetric SEAL key")
        self.reals_per_ciphertext = keys.profile.poly_modulus_degree
        context = keys.public.seal_context
        self._context = context
        self._encoder = seal.CKKSEncoder(context)
        self._encryptor = seal.Encryptor(context, keys.secret_key)
        self._decryptor = seal.Decryptor(context, keys.secret_key)

    def encrypt(self, reals: np.ndarray, scale_bits: int) -> list[bytes]:
        """One ciphertext per N reals (the last one zero-padded); returns the serialized chunks."""
        per = self.reals_per_ciphertext
        count = -(-reals.shape[0] // per)
        padded = reals
        if reals.shape[0] != count * per or reals.dtype != np.float64:
            padded = np.zeros(count * per)
            padded[: reals.shape[0]] = reals
        # (x0, x1, x2, ...) as complex128 is (x0 + i*x1, x2 + i*x3, ...): packing by a view.
        slots = padded.view(np.complex128)
        half = per // 2
        scale = 2.0**scale_bits
        chunks: list[bytes] = []
        plain = seal.Plaintext()
        for start in range(0, slots.shape[0], half):
            self._encoder.encode(slots[start : start + half].tolist(), scale, plain)
            chunks.append(save_bytes(self._encryptor.encrypt_symmetric(plain)))
        return chunks

    def decrypt(self, chunks: Sequence[bytes]) -> np.ndarray:
        """All N reals of every chunk, in order (padding included: callers check it is zero)."""
        per = self.reals_per_ciphertext
        out = np.empty(len(chunks) * per)  # every element is written below
        slots = out.view(np.complex128)
        half = per // 2
        plain = seal.Plaintext()
        for i, data in enumerate(chunks):
            self._decryptor.decrypt(load_ciphertext(self._context, data), plain)
            slots[i * half : (i + 1) * half] = self._encoder.decode_complex(plain)
        return out
