"""Encrypted weighted sums, as recipes: encrypt at silos, accumulate in place at the aggregator, decrypt at silos.

Every public name here is a *recipe*: it does one job together with the checks that make it safe —
values bounded and finite before encryption, every chunk matched against its signed manifest's digest
before it is loaded or added, key fingerprints compared, a ciphertext's scale compared with the
manifest's, the decrypted total weight required to be whole (a foreign key shows as noise), contributor
tags split off. The raw SEAL and plaintext-chunk calls underneath live in :mod:`crypto.hazmat`, which
checks nothing; only this package may import it.

Profile ``sum`` uses raw SEAL: complex packing (two reals per slot) and seeded symmetric encryption,
so an upload costs about 8 bytes per parameter (2x float32). The aggregator side (:class:`ChunkVerifier`,
:class:`Accumulator`) is built from a :class:`PublicContext` only: it can load and add, and has no
object that could decrypt. Profile ``none`` moves float64 plaintext through the same recipes for
comparison runs, but only through the separately named :class:`UnencryptedSumForComparisonOnly`:
``SumEncryptor`` never silently becomes a plaintext engine. A new encryptor (another profile) is one
more :class:`UpdateEncryptor` subclass next to these two.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crypto.contributors import CONTRIBUTOR_TAGS, PUBLIC_TAG_KEY, tag_key_from_secret
from crypto.errors import CiphertextError, FingerprintMismatchError, ManifestError, ValueRangeError
from crypto.hazmat import plain as hazmat_plain
from crypto.hazmat.ckks import SealArithmetic, SealSecretOps, complex_unpack_view
from crypto.hazmat.plain import PlainArithmetic
from crypto.keys import PublicContext, SecretKeySet
from crypto.packing import Layout, Manifest, chunk_digest, pack, unpack
from crypto.profiles import QUANTIZED_PROFILES, Profile, get_profile
from crypto.seal_io import save_bytes

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


class UpdateEncryptor(ABC):
    """Silo side of one profile: encrypt and decrypt flat vectors, with the checks every profile needs.

    Subclasses supply the raw chunk codec (``_encrypt_checked``, ``decrypt``); the bound and finiteness
    checks run here, once, for all of them.
    """

    profile: Profile
    fingerprint: str
    tag_key: bytes  # contributor tag key, see crypto.contributors

    @property
    def values_per_chunk(self) -> int:
        return self.profile.values_per_ciphertext

    def encrypt(self, vector: np.ndarray, scale_bits: int | None = None) -> list[bytes]:
        """Refuse NaN/infinite values and values beyond the profile's bound, then cut and encrypt."""
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
        return self._encrypt_checked(vector, scale_bits)

    @abstractmethod
    def _encrypt_checked(self, vector: np.ndarray, scale_bits: int) -> list[bytes]:
        """Encrypt a vector that ``encrypt`` has already bounded."""

    @abstractmethod
    def decrypt(self, chunks: Sequence[bytes], value_count: int, scale_bits: int | None = None) -> np.ndarray:
        """Decrypt aggregate chunks back to a flat vector of ``value_count`` values."""


class SumEncryptor(UpdateEncryptor):
    """Silo side of profile ``sum``: CKKS under the job's secret key. Needs a :class:`SecretKeySet`."""

    def __init__(self, keys: SecretKeySet) -> None:
        if not isinstance(keys, SecretKeySet):
            raise TypeError(
                f"SumEncryptor needs the job's SecretKeySet, got {type(keys).__name__}; for a plaintext "
                f"('none' profile) comparison run use crypto.engine.UnencryptedSumForComparisonOnly() explicitly"
            )
        if keys.profile.engine != "seal-seeded" or keys.secret_key is None:
            raise CiphertextError(f"profile {keys.profile.name!r} cannot be used for encrypted sums")
        if keys.profile.name in QUANTIZED_PROFILES:
            raise CiphertextError(
                f"profile {keys.profile.name!r} is quantized: encrypt with crypto.compact.CompactEncryptor"
            )
        self.profile = keys.profile
        self.fingerprint = keys.fingerprint
        self._context = keys.public.seal_context
        self._ops = SealSecretOps(self._context, keys.secret_key)
        self.tag_key = tag_key_from_secret(save_bytes(keys.secret_key))

    def _encrypt_checked(self, vector: np.ndarray, scale_bits: int) -> list[bytes]:
        return self._ops.encrypt_packed(vector, scale_bits, self.values_per_chunk)

    def decrypt(self, chunks: Sequence[bytes], value_count: int, scale_bits: int | None = None) -> np.ndarray:
        """Decrypt aggregate chunks back to a flat vector of ``value_count`` values.

        A ciphertext's scale is unauthenticated metadata that decoding divides by: with ``scale_bits``
        (the manifest's), any other scale is refused, so a relay cannot rescale values silently.
        """
        per = self.values_per_chunk
        out = np.zeros(len(chunks) * per)
        slots = complex_unpack_view(out)
        half = per // 2

        def scale_checked() -> Iterator[Any]:
            for i, data in enumerate(chunks):
                ciphertext = self._ops.load(data)
                if scale_bits is not None and ciphertext.scale != 2.0**scale_bits:
                    raise CiphertextError(f"chunk {i} has scale {ciphertext.scale:.6g}, not 2^{scale_bits}: tampered")
                yield ciphertext  # decrypted only after its check (the generator is lazy)

        for i, decoded in enumerate(self._ops.decrypt_each(scale_checked())):
            slots[i * half : (i + 1) * half] = decoded
        return out[:value_count]


class UnencryptedSumForComparisonOnly(UpdateEncryptor):
    """Profile ``none``: NOT ENCRYPTED. Float64 values in the clear, for comparison runs only.

    The aggregator and anyone on the path see every contribution. It exists so that a consortium can
    measure what encryption costs; a consortium policy may forbid the profile. Deliberately not a
    ``SumEncryptor``: choosing it must be visible in the code that does.
    """

    def __init__(self) -> None:
        self.profile = get_profile("none")
        self.fingerprint = PLAIN_FINGERPRINT
        self.tag_key = PUBLIC_TAG_KEY

    def _encrypt_checked(self, vector: np.ndarray, scale_bits: int) -> list[bytes]:
        return hazmat_plain.encode_chunks(vector, self.values_per_chunk)

    def decrypt(self, chunks: Sequence[bytes], value_count: int, scale_bits: int | None = None) -> np.ndarray:
        per = self.values_per_chunk
        out = np.zeros(len(chunks) * per)
        for i, data in enumerate(chunks):
            values = _plain_values(data)
            out[i * per : i * per + values.shape[0]] = values
        return out[:value_count]


def _plain_values(data: bytes) -> np.ndarray:
    """A plaintext chunk, bounded in length and required to hold only finite values."""
    if len(data) % 8 or len(data) > PLAIN_VALUES_PER_CHUNK * 8:
        raise CiphertextError(f"plaintext chunk of {len(data)} bytes is malformed")
    values = hazmat_plain.decode(data)
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
    encryptor: UpdateEncryptor, layout: Layout, value_count: int, scale_bits: int, chunks: Sequence[bytes]
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
    encryptor: UpdateEncryptor,
    tensors: Mapping[str, Any],
    weight: float,
    scale_bits: int | None = None,
    tags: np.ndarray | None = None,
) -> EncryptedBatch:
    """Pre-multiply every value by ``weight`` (the sample count) and append ``weight`` itself.

    The aggregate then holds sum_i(w_i * u_i) and sum_i(w_i); dividing at the silo gives the
    weighted mean without the aggregator ever learning a single w_i. ``tags`` (contributor tag lanes,
    see crypto.contributors) travel unweighted as a last tensor named CONTRIBUTOR_TAGS.
    """
    weighted, layout = _weighted_vector(tensors, weight, tags)
    scale = encryptor.profile.scale_bits if scale_bits is None else scale_bits
    chunks = encryptor.encrypt(weighted, scale)
    return EncryptedBatch(make_manifest(encryptor, layout, weighted.shape[0], scale, chunks), chunks)


def _weighted_vector(tensors: Mapping[str, Any], weight: float, tags: np.ndarray | None) -> tuple[np.ndarray, Layout]:
    """The plaintext vector of :func:`encrypt_weighted_update` and its layout (tags last, weight appended)."""
    if not weight > 0:
        raise ValueRangeError(f"sample weight must be positive, got {weight}")
    if tags is not None:
        tensors = {**tensors, CONTRIBUTOR_TAGS: np.asarray(tags, dtype=np.float64)}
    vector, layout = pack(tensors)
    weighted = vector * float(weight)
    if tags is not None and tags.shape[0]:
        weighted[-tags.shape[0] :] = tags
    return np.append(weighted, float(weight)), layout


def weighted_update_layout_key(
    encryptor: UpdateEncryptor,
    tensors: Mapping[str, Any],
    weight: float,
    scale_bits: int | None = None,
    tags: np.ndarray | None = None,
) -> tuple[str, str, str, int, int, int]:
    """``Manifest.layout_key`` of what :func:`encrypt_weighted_update` would produce, without encrypting.

    A silo that has no upload of its own for a round compares the aggregate's unsigned manifest with
    this: the aggregator must not choose the layout (tensor order, offsets, tag lanes) a silo applies.
    """
    weighted, layout = _weighted_vector(tensors, weight, tags)
    scale = encryptor.profile.scale_bits if scale_bits is None else scale_bits
    manifest = Manifest(
        encryptor.profile.name, encryptor.fingerprint, layout, weighted.shape[0], encryptor.values_per_chunk, scale, ()
    )
    return manifest.layout_key()


@dataclass
class WeightedMean:
    tensors: dict[str, Any]
    total_weight: float
    tags: np.ndarray | None = None  # decrypted contributor tag lanes (not divided), if the layout has them


WHOLE_WEIGHT_TOLERANCE = 1e-3  # CKKS error on the total weight is ~1e-9; a foreign key gives noise of ~2^19


def whole_weight_tolerance(scale_bits: int) -> float:
    """How far from a whole number a decrypted total weight may be at this scale.

    The CKKS error grows as the scale shrinks: at 2^20 (the statistics round) its standard deviation
    was measured at 2.8e-4 (2 silos), 5.7e-4 (8) and 1.8e-3 (64), so a fixed 1e-3 sometimes refused
    honest aggregates. 2^(13 - scale_bits) is 7.8e-3 at 2^20 (over 4 standard deviations at 64 silos)
    and still catches a foreign-key contribution 98% of the time.
    """
    return max(WHOLE_WEIGHT_TOLERANCE, 2.0 ** (13 - scale_bits))


def decrypt_weighted_mean(
    encryptor: UpdateEncryptor, manifest: Manifest, chunks: Sequence[bytes], whole_weights: bool = True
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
    vector = encryptor.decrypt(chunks, manifest.value_count, manifest.scale_bits)
    total = float(vector[-1])
    whole = not whole_weights or abs(total - round(total)) <= whole_weight_tolerance(manifest.scale_bits)
    if not total > 0.5 or not whole:
        kind = "a positive whole number of samples" if whole_weights else "positive"
        raise CiphertextError(
            f"decrypted total weight {total:.6g} is not {kind}: a contribution was encrypted under another key "
            f"or corrupted; this aggregate cannot be used"
        )
    means = vector[:-1]
    tag_spec = manifest.layout.tensors[-1] if manifest.layout.tensors else None
    tags = None
    if tag_spec is not None and tag_spec.name == CONTRIBUTOR_TAGS:
        tags = means[tag_spec.offset : tag_spec.offset + tag_spec.size].copy()
    means /= total
    tensors = unpack(means, manifest.layout)
    tensors.pop(CONTRIBUTOR_TAGS, None)
    return WeightedMean(tensors, total, tags)


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
        self._ops = SealArithmetic(public.seal_context) if public is not None else None
        self.manifest = manifest
        self.next_index = 0

    def load(self, index: int, data: bytes) -> Any:
        if index != self.next_index:
            raise ManifestError(f"chunk {index} arrived out of order; expected chunk {self.next_index}")
        if index >= self.manifest.chunk_count:
            raise ManifestError(f"chunk {index} is beyond the manifest's {self.manifest.chunk_count} chunks")
        if chunk_digest(data) != self.manifest.chunk_digests[index]:
            raise CiphertextError(f"chunk {index} does not match its digest in the signed manifest")
        loaded: Any = _plain_values(data) if self._ops is None else self._ops.load(data)
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
        self._ops: SealArithmetic | PlainArithmetic = (
            SealArithmetic(public.seal_context) if public is not None else PlainArithmetic()
        )
        self._sums: list[Any] = [None] * chunk_count
        self._counts = [0] * chunk_count

    @property
    def chunk_count(self) -> int:
        return len(self._sums)

    def add(self, index: int, loaded: Any) -> None:
        current = self._sums[index]
        if current is None:
            self._sums[index] = self._ops.first(loaded)
        else:
            try:
                self._ops.add_inplace(current, loaded)
            except (RuntimeError, ValueError) as exc:
                raise CiphertextError(f"chunk {index} cannot be added to the round's sum: {exc}") from None
        self._counts[index] += 1

    def subtract(self, index: int, loaded: Any) -> None:
        if self._counts[index] == 0:
            return
        self._counts[index] -= 1
        if self._counts[index] == 0:
            self._sums[index] = None  # nothing left: avoid a transparent (all-zero) ciphertext
        else:
            self._ops.sub_inplace(self._sums[index], loaded)

    def serialize(self) -> list[bytes]:
        if any(count == 0 for count in self._counts):
            raise ManifestError("accumulator has chunks with no contribution")
        return [self._ops.save(s) for s in self._sums]


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
