"""Encrypted weighted sums: encrypt at silos, accumulate in place at the aggregator, decrypt at silos.

Profile ``sum`` uses raw SEAL through ``tenseal.sealapi``: complex packing (two reals per slot)
and seeded symmetric encryption, so an upload costs about 8 bytes per parameter (2x float32).
The aggregator side (:class:`ChunkVerifier`, :class:`Accumulator`) is built from a
:class:`PublicContext` only: it can load and add, and has no object that could decrypt.
Profile ``none`` moves float64 plaintext through the same path for comparison runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from crypto.errors import CiphertextError, FingerprintMismatchError, ManifestError, ValueRangeError
from crypto.keys import PublicContext, SecretKeySet
from crypto.packing import Layout, Manifest, chunk_digest, pack, unpack
from crypto.profiles import QUANTIZED_PROFILES, get_profile
from crypto.seal_io import load_ciphertext, save_bytes

PLAIN_FINGERPRINT = "plaintext"
PLAIN_VALUES_PER_CHUNK = 8192
# Each contribution may use 1/MAX_CONTRIBUTORS of the representable range, so the sum of up to
# that many contributions can never wrap around the data prime.
MAX_CONTRIBUTORS = 64


def contribution_bound(profile_name: str, scale_bits: int) -> float:
    """Largest |value| one silo may encrypt so that a sum of MAX_CONTRIBUTORS stays exact."""
    profile = get_profile(profile_name)
    if profile.engine == "plain":
        return math.inf
    data_bits = profile.coeff_modulus_bits[0]
    return float(2 ** (data_bits - scale_bits - 1)) / MAX_CONTRIBUTORS


class SumEncryptor:
    """Silo side of profile ``sum`` (or ``none``): encrypt and decrypt flat vectors."""

    def __init__(self, keys: SecretKeySet | None) -> None:
        if keys is None:
            self.profile = get_profile("none")
            self.fingerprint = PLAIN_FINGERPRINT
            self._keys = None
            return
        if keys.profile.engine != "seal-seeded":
            raise CiphertextError(f"profile {keys.profile.name!r} cannot be used for encrypted sums")
        if keys.profile.name in QUANTIZED_PROFILES:
            raise CiphertextError(
                f"profile {keys.profile.name!r} is quantized: encrypt with crypto.compact.CompactEncryptor"
            )
        self.profile = keys.profile
        self.fingerprint = keys.fingerprint
        self._keys = keys
        context = keys.public.seal_context
        self._context = context
        self._encoder = seal.CKKSEncoder(context)
        self._encryptor = seal.Encryptor(context, keys.secret_key)
        self._decryptor = seal.Decryptor(context, keys.secret_key)

    @property
    def values_per_chunk(self) -> int:
        return self.profile.values_per_ciphertext

    def encrypt(self, vector: np.ndarray, scale_bits: int | None = None) -> list[bytes]:
        """Cut ``vector`` into chunks and encrypt each (seeded symmetric, complex packing)."""
        scale_bits = self.profile.scale_bits if scale_bits is None else scale_bits
        bound = contribution_bound(self.profile.name, scale_bits)
        peak = float(np.max(np.abs(vector))) if vector.size else 0.0
        if not math.isfinite(peak):
            raise ValueRangeError("update contains NaN or infinite values; refusing to encrypt it")
        if peak > bound:
            raise ValueRangeError(
                f"largest |value| {peak:.4g} exceeds {bound:.4g}, the bound for profile {self.profile.name!r} "
                f"at scale 2^{scale_bits}; values beyond it would wrap silently (lower the learning rate, "
                f"clip the update, or scale the sample weights)"
            )
        per = self.values_per_chunk
        chunks: list[bytes] = []
        if self._keys is None:
            for start in range(0, vector.shape[0], per):
                chunks.append(np.ascontiguousarray(vector[start : start + per], dtype="<f8").tobytes())
            return chunks
        scale = 2.0**scale_bits
        half = per // 2
        # Reals (x0, x1, x2, ...) become slots (x0 + i*x1, x2 + i*x3, ...): exactly the memory
        # layout of complex128, so a view does the packing without copies.
        padded = np.zeros(-(-vector.shape[0] // per) * per)
        padded[: vector.shape[0]] = vector
        packed = padded.view(np.complex128)
        for start in range(0, packed.shape[0], half):
            slots = packed[start : start + half].tolist()
            plain = seal.Plaintext()
            self._encoder.encode(slots, scale, plain)
            chunks.append(save_bytes(self._encryptor.encrypt_symmetric(plain)))
        return chunks

    def decrypt(self, chunks: Sequence[bytes], value_count: int) -> np.ndarray:
        """Decrypt aggregate chunks back to a flat vector of ``value_count`` values."""
        per = self.values_per_chunk
        out = np.zeros(len(chunks) * per)
        if self._keys is None:
            for i, data in enumerate(chunks):
                values = _plain_values(data)
                out[i * per : i * per + values.shape[0]] = values
            return out[:value_count]
        slots = out.view(np.complex128)  # inverse of the packing in encrypt()
        half = per // 2
        plain = seal.Plaintext()
        for i, data in enumerate(chunks):
            self._decryptor.decrypt(load_ciphertext(self._context, data), plain)
            slots[i * half : (i + 1) * half] = self._encoder.decode_complex(plain)
        return out[:value_count]


def _plain_values(data: bytes) -> np.ndarray:
    if len(data) % 8 or len(data) > PLAIN_VALUES_PER_CHUNK * 8:
        raise CiphertextError(f"plaintext chunk of {len(data)} bytes is malformed")
    values = np.frombuffer(data, dtype="<f8")
    if not np.all(np.isfinite(values)):
        raise CiphertextError("plaintext chunk holds NaN or infinite values")
    return values


@dataclass
class EncryptedBatch:
    manifest: Manifest
    chunks: list[bytes]

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks)


def make_manifest(
    encryptor: SumEncryptor, layout: Layout, value_count: int, scale_bits: int, chunks: Sequence[bytes]
) -> Manifest:
    manifest = Manifest(
        encryptor.profile.name,
        encryptor.fingerprint,
        layout,
        value_count,
        encryptor.values_per_chunk,
        scale_bits,
        tuple(chunk_digest(c) for c in chunks),
    )
    manifest.check_consistent()
    return manifest


def encrypt_weighted_update(
    encryptor: SumEncryptor, tensors: Mapping[str, Any], weight: float, scale_bits: int | None = None
) -> EncryptedBatch:
    """Pre-multiply every value by ``weight`` (the sample count) and append ``weight`` itself.

    The aggregate then holds sum_i(w_i * u_i) and sum_i(w_i); dividing at the silo gives the
    weighted mean without the aggregator ever learning a single w_i.
    """
    if not weight > 0:
        raise ValueRangeError(f"sample weight must be positive, got {weight}")
    vector, layout = pack(tensors)
    weighted = np.append(vector * float(weight), float(weight))
    scale = encryptor.profile.scale_bits if scale_bits is None else scale_bits
    chunks = encryptor.encrypt(weighted, scale)
    return EncryptedBatch(make_manifest(encryptor, layout, weighted.shape[0], scale, chunks), chunks)


@dataclass
class WeightedMean:
    tensors: dict[str, Any]
    total_weight: float


WHOLE_WEIGHT_TOLERANCE = 1e-3  # CKKS error on the total weight is ~1e-9; a foreign key gives noise of ~2^19


def decrypt_weighted_mean(
    encryptor: SumEncryptor, manifest: Manifest, chunks: Sequence[bytes], whole_weights: bool = True
) -> WeightedMean:
    """Decrypt an aggregate of weighted updates and divide by the decrypted total weight.

    With ``whole_weights`` (sample counts), the total must decrypt to a whole number: a contribution
    encrypted under another key — which the aggregator cannot notice — turns every value, the total
    included, into noise, and is caught here with probability ~99.8% per aggregate.
    """
    if manifest.fingerprint != encryptor.fingerprint:
        raise FingerprintMismatchError(
            f"aggregate is under key {manifest.fingerprint}, this silo holds {encryptor.fingerprint}"
        )
    if manifest.value_count != manifest.layout.total + 1:
        raise ManifestError("aggregate carries no appended weight")
    vector = encryptor.decrypt(chunks, manifest.value_count)
    total = float(vector[-1])
    whole = not whole_weights or abs(total - round(total)) <= WHOLE_WEIGHT_TOLERANCE
    if not total > 0.5 or not whole:
        kind = "a positive whole number of samples" if whole_weights else "positive"
        raise CiphertextError(
            f"decrypted total weight {total:.6g} is not {kind}: a contribution was encrypted under another key "
            f"or corrupted; this aggregate cannot be used"
        )
    means = vector[:-1]
    means /= total
    return WeightedMean(unpack(means, manifest.layout), total)


class ChunkVerifier:
    """Checks the chunks of one upload against its (already authenticated) manifest.

    Chunks must arrive in order; each must hash to the digest the signed manifest lists, and
    must load under the job's parameters. Only then is it handed to the accumulator.
    """

    def __init__(self, public: PublicContext | None, manifest: Manifest, expected_fingerprint: str) -> None:
        if manifest.fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"upload is encrypted under key {manifest.fingerprint}; this job uses {expected_fingerprint}"
            )
        manifest.check_consistent()
        plain = manifest.profile == "none"
        if plain != (public is None):
            raise ManifestError(f"profile {manifest.profile!r} does not match the job's encryption")
        if public is not None and manifest.profile != public.profile.name:
            raise ManifestError(f"upload profile {manifest.profile!r}, job profile {public.profile.name!r}")
        self._context = public.seal_context if public is not None else None
        self.manifest = manifest
        self.next_index = 0

    def load(self, index: int, data: bytes) -> Any:
        if index != self.next_index:
            raise ManifestError(f"chunk {index} arrived out of order; expected chunk {self.next_index}")
        if index >= self.manifest.chunk_count:
            raise ManifestError(f"chunk {index} is beyond the manifest's {self.manifest.chunk_count} chunks")
        if chunk_digest(data) != self.manifest.chunk_digests[index]:
            raise CiphertextError(f"chunk {index} does not match its digest in the signed manifest")
        loaded: Any = _plain_values(data) if self._context is None else load_ciphertext(self._context, data)
        self.next_index += 1
        return loaded

    def finish(self) -> None:
        if self.next_index != self.manifest.chunk_count:
            raise ManifestError(
                f"upload ended after {self.next_index} of {self.manifest.chunk_count} chunks (truncated)"
            )


class Accumulator:
    """Running sum of verified chunks, added in place into the first chunk received.

    Memory is one chunk per chunk index, whatever the number of contributors. ``subtract``
    undoes a contribution exactly (ciphertext arithmetic is exact modulo q), which lets the
    aggregator roll back an upload that fails halfway without disturbing the round. The chunk
    handed to ``subtract`` must be freshly loaded from the bytes: the first chunk added at an
    index *is* the running sum and has been changed by every later addition.
    """

    def __init__(self, public: PublicContext | None, chunk_count: int) -> None:
        self._evaluator = seal.Evaluator(public.seal_context) if public is not None else None
        self._sums: list[Any] = [None] * chunk_count
        self._counts = [0] * chunk_count

    @property
    def chunk_count(self) -> int:
        return len(self._sums)

    def add(self, index: int, loaded: Any) -> None:
        current = self._sums[index]
        if current is None:
            self._sums[index] = loaded if self._evaluator is not None else np.array(loaded, dtype=np.float64)
        elif self._evaluator is not None:
            try:
                self._evaluator.add_inplace(current, loaded)
            except (RuntimeError, ValueError) as exc:
                raise CiphertextError(f"chunk {index} cannot be added to the round's sum: {exc}") from None
        else:
            current += loaded
        self._counts[index] += 1

    def subtract(self, index: int, loaded: Any) -> None:
        if self._counts[index] == 0:
            return
        self._counts[index] -= 1
        if self._counts[index] == 0:
            self._sums[index] = None  # nothing left: avoid a transparent (all-zero) ciphertext
        elif self._evaluator is not None:
            self._evaluator.sub_inplace(self._sums[index], loaded)
        else:
            self._sums[index] -= loaded

    def serialize(self) -> list[bytes]:
        if any(count == 0 for count in self._counts):
            raise ManifestError("accumulator has chunks with no contribution")
        if self._evaluator is None:
            return [np.ascontiguousarray(s, dtype="<f8").tobytes() for s in self._sums]
        return [save_bytes(s) for s in self._sums]


def accumulate_batches(
    public: PublicContext | None, fingerprint: str, batches: Sequence[EncryptedBatch]
) -> Accumulator:
    """Sum whole in-memory batches, each chunk verified against its batch's manifest first.

    The aggregator does the same chunk by chunk as an upload streams in (with rollback); this is
    the form for callers that already hold every batch: benchmarks and tests.
    """
    accumulator = Accumulator(public, batches[0].manifest.chunk_count)
    for batch in batches:
        verifier = ChunkVerifier(public, batch.manifest, fingerprint)
        for index, chunk in enumerate(batch.chunks):
            accumulator.add(index, verifier.load(index, chunk))
        verifier.finish()
    return accumulator
