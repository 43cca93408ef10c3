"""Profile ``compact``: weighted updates as quantized integer lanes, two per CKKS real, summed exactly.

Upload (silo): clip each value of the update u to ±bound and count the clipped ones; multiply by
the silo's relative weight w / W (w: its sample count, W: the job's public cap on one silo's
weight); quantize to b-bit integers with stochastic rounding; pack ``lanes_per_real`` integers per
real (crypto/lanes.py) and encrypt N reals per ciphertext. The first HEADER_REALS reals of every
ciphertext are a header: the contributor count (each silo writes 1) and the weight w, both exact
integers.

Aggregate (aggregator): the existing :class:`crypto.engine.Accumulator` adds the ciphertexts; the
aggregator sees neither w nor any lane.

Download (silo): decrypt, require every real to be an exact integer within range (a contribution
under another key decrypts to noise and fails this on practically every real), require every
ciphertext's header to agree and to be plausible (1 <= count <= max_silos, count <= total weight
<= count * W), split the lanes exactly, and return

    mean = step * W * (sum of lane integers) / (total weight),  step = bound / (2^(b-1) - 1),

an unbiased estimate of the weighted mean sum_i w_i u_i / sum_i w_i of the clipped updates.

Contributor tags (crypto/contributors.py) ride after the lane reals, one exact integer real per
participant: round(tau * TAG_SCALE), neither quantized nor weighted, under the tensor name
CONTRIBUTOR_TAGS as in profile ``sum``. They cannot be lanes: a tag is far larger than a lane value.
The decrypted reals are exact integers, so a tag reads c * tau to within 1/(2 * TAG_SCALE), far
inside TAG_TOLERANCE, and :func:`crypto.contributors.verify_tags` applies unchanged.

Secure aggregation (``CompactParams.secure_aggregation``, crypto/compact_masked.py): the lane
values and the weight header are SecAgg-masked mod 2^w before encryption and packed into wider
masked lanes (crypto/lanes.py ``masked_layout``); the aggregator adds a plaintext correction to the
encrypted sum, and the silos reduce every masked lane and weight digit mod 2^w after decryption.

Weighting decision. Integer lanes have no room for w_i * q_i (sample counts would add ~log2 W
bits to every lane), so each silo scales its update by w_i / W <= 1 before quantizing and the
lane budget is unchanged. The price is precision: the rounding error of the mean grows by
W / mean(w_i), i.e. log2(W / mean(w_i)) bits. W must therefore be set close to the largest silo's
sample count; a silo with more samples than W is weighted as W (its influence is capped, and the
encryptor reports it). The total weight travels in its own exact real, so the aggregator learns no
w_i and the silos learn only sum_i w_i, as with profile ``sum``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crypto.compact_masked import (
    WEIGHT_DIGITS,
    Mask,
    frame,
    masked_lanes_and_weights,
    masked_layout_of,
    max_masked_weight,
    unmasked_weights,
    upload_residues,
)
from crypto.compact_masked import centered_correction as centered_correction
from crypto.compact_masked import mask_length as mask_length
from crypto.compact_masked import mask_length_for as mask_length_for
from crypto.contributors import CONTRIBUTOR_TAGS, tag_key_from_secret
from crypto.engine import EncryptedBatch
from crypto.errors import CiphertextError, FingerprintMismatchError, ManifestError, ValueRangeError
from crypto.keys import SecretKeySet
from crypto.lanes import (
    EXACT_INTEGER_BITS,
    SCALE_BITS,
    LaneLayout,
    MaskedLaneLayout,
    compact_layout,
    masked_layout,
    max_bits_for,
    pack_lanes,
    to_integers,
    unmasked_lane_sums,
    unpack_lanes,
)
from crypto.packing import HEADER_REALS as HEADER_REALS  # re-exported: the compact format's header
from crypto.packing import LANE_PACKED_PROFILE, Manifest, chunk_count_for, chunk_digest, pack, unpack
from crypto.quantize import UniformStream, check_quantizer, quantize, step
from crypto.seal_io import save_bytes
from crypto.seal_reals import SeededRealCodec

PROFILE_NAME = LANE_PACKED_PROFILE  # one spelling, in crypto.packing (its chunk-count rule)
DEFAULT_MAX_SILOS = 16
# Clipping biases the mean, rounding only adds zero-mean noise of ~step/2 per value: prefer a wide
# bound. 1.0 is 20 standard deviations of N(0, 0.05) updates and clips ~5e-5 of heavy-tailed
# (Student-t(3)) ones, while the rounding error of a 16-silo mean stays ~1e-5 (benchmarks/compact_accuracy.py).
DEFAULT_BOUND = 1.0
# Tag reals carry round(tau * TAG_SCALE): tau < 1023, so below 2^20, and exact to 1/2048 of tau.
TAG_SCALE = 1024


@dataclass(frozen=True)
class CompactParams:
    """Quantization of one job: fixed before the first round, identical at every silo."""

    bits: int
    bound: float
    max_silos: int
    weight_cap: int
    # Mask lanes and weights with SecAgg masks (crypto/compact_masked.py); off keeps every digest unchanged.
    secure_aggregation: bool = False
    layout: LaneLayout = field(init=False, repr=False, compare=False)  # unmasked lanes: w = layout.lane_bits
    packing: LaneLayout = field(init=False, repr=False, compare=False)  # the lanes uploads are packed in

    def __post_init__(self) -> None:
        check_quantizer(self.bits, self.bound)
        object.__setattr__(self, "layout", compact_layout(self.bits, self.max_silos))
        object.__setattr__(self, "packing", self.layout)
        if not isinstance(self.secure_aggregation, bool):
            raise ValueRangeError(
                f"compact profile: secure_aggregation must be true or false, got {self.secure_aggregation!r}"
            )
        cap = self.weight_cap
        limit = (1 << EXACT_INTEGER_BITS) // self.max_silos
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= limit:
            raise ValueRangeError(
                f"compact profile: weight_cap (the largest sample count one silo is weighted with) must be an "
                f"integer in 1..{limit} for {self.max_silos} silos, got {cap!r}"
            )
        if self.secure_aggregation:
            self._check_masked()

    def _check_masked(self) -> None:
        """Masked lanes must fit two per real, and a weight must fit the two masked digits of its header."""
        packing = masked_layout(self.bits, self.max_silos)
        object.__setattr__(self, "packing", packing)
        largest = max_masked_weight(packing)
        if self.weight_cap > largest:
            raise ValueRangeError(
                f"secure aggregation: weight_cap {self.weight_cap} is too large; a weight is masked as two "
                f"{self.bits}-bit digits (the quantization width), so it must stay below 2^{2 * self.bits}: "
                f"lower weight_cap to at most {largest} (count weights in larger units if sample counts are bigger)"
            )

    @property
    def mask_bits(self) -> int:
        """Width w of the SecAgg masks (mod 2^w): the unmasked lane width."""
        return self.layout.lane_bits

    @property
    def step(self) -> float:
        return step(self.bound, self.bits)

    def describe(self) -> str:
        """The quantization as canonical JSON: what the signed manifest carries (rounding is stochastic)."""
        fields: dict[str, object] = {
            "bits": self.bits,
            "bound": self.bound,
            "max_silos": self.max_silos,
            "rounding": "stochastic",
            "weight_cap": self.weight_cap,
        }
        if self.secure_aggregation:  # only then: unmasked jobs keep their digests and frozen vectors
            # "unmasking": who removes the masks. A release that released unmasked sums wrote no such field,
            # so a silo and an aggregator of different releases refuse each other's uploads by the manifest's
            # quantization, instead of one of them decrypting a sum the other still expects to unmask.
            fields.update({"mask_bits": self.mask_bits, "secure_aggregation": True, "unmasking": "silos"})
        return json.dumps(
            fields,
            sort_keys=True,
            separators=(",", ":"),
        )


def default_bits(max_silos: int) -> int:
    """The widest quantization that keeps two lanes per real for this consortium size."""
    return max_bits_for(max_silos)


@dataclass
class CompactBatch(EncryptedBatch):
    """One silo's encrypted upload plus what it must record: clipped values and a capped weight.

    An :class:`EncryptedBatch`, so the aggregator side (verifier, accumulator) takes it unchanged.
    """

    clipped: int
    weight: int
    weight_capped: bool


@dataclass
class CompactMean:
    tensors: dict[str, Any]
    total_weight: int
    contributors: int  # from the decrypted header: honest contributions actually summed
    tags: np.ndarray | None = None  # decrypted contributor tag lanes in tau units, if the layout has them


@dataclass
class LaneSums:
    values: np.ndarray  # int64: the exact sum over contributions of each quantized value
    contributors: int
    total_weight: int
    tags: np.ndarray | None = None  # float64, tau units (decrypted integers / TAG_SCALE)


class CompactEncryptor:
    """Silo side of profile ``compact``: quantize, pack lanes, encrypt; decrypt, check, unpack."""

    def __init__(self, keys: SecretKeySet, params: CompactParams) -> None:
        if keys.profile.name != PROFILE_NAME:
            raise CiphertextError(f"profile {keys.profile.name!r} keys cannot be used for the compact profile")
        if keys.profile.scale_bits != SCALE_BITS:
            raise CiphertextError(f"compact keys must use scale 2^{SCALE_BITS}, not 2^{keys.profile.scale_bits}")
        self.profile = keys.profile
        self.fingerprint = keys.fingerprint
        self.params = params
        self._codec = SeededRealCodec(keys)
        assert keys.secret_key is not None  # SeededRealCodec refused a key set without one
        self.tag_key = tag_key_from_secret(save_bytes(keys.secret_key))

    @property
    def data_reals_per_chunk(self) -> int:
        return self._codec.reals_per_ciphertext - HEADER_REALS

    @property
    def values_per_chunk(self) -> int:
        return self.params.packing.lanes_per_real * self.data_reals_per_chunk

    def encrypt_update(
        self,
        tensors: Mapping[str, Any],
        weight: float,
        seed: bytes | None = None,
        tags: np.ndarray | None = None,
        mask: Mask | None = None,
    ) -> CompactBatch:
        """Quantize ``tensors`` weighted by ``weight`` (a whole sample count) and encrypt them.

        ``tags`` (contributor tag lanes) travel after the lanes as exact integers, see the module notes.
        ``mask`` (required exactly when the params have secure_aggregation) maps the uint64 vector
        [lane values mod 2^w, weight per chunk] to its SecAgg-masked residues (crypto/compact_masked.py).
        """
        if (mask is not None) != self.params.secure_aggregation:
            raise ValueRangeError(
                "a mask was given but this job has secure_aggregation off"
                if mask is not None
                else "this job has secure_aggregation on: encrypt_update needs the round's `mask`"
            )
        tag_reals = np.zeros(0)
        if tags is not None:
            tags = np.asarray(tags, dtype=np.float64)
            if tags.ndim != 1 or not np.all(np.isfinite(tags)) or float(np.max(np.abs(tags), initial=0.0)) > 2.0**20:
                raise ValueRangeError("contributor tags must be a finite vector of values below 2^20")
            tensors = {**tensors, CONTRIBUTOR_TAGS: tags}
            tag_reals = np.rint(tags * TAG_SCALE)
        vector, layout = pack(tensors)
        if tag_reals.shape[0]:
            vector = vector[: vector.shape[0] - tag_reals.shape[0]]
        if vector.shape[0] == 0:
            raise ValueRangeError("update has no values; nothing to encrypt")
        if not (math.isfinite(weight) and weight >= 1 and float(weight).is_integer()):
            raise ValueRangeError(f"sample weight must be a whole number >= 1 for the compact profile, got {weight}")
        capped = int(weight) > self.params.weight_cap
        w = min(int(weight), self.params.weight_cap)
        quantized = quantize(
            vector, self.params.bound, self.params.bits, UniformStream(seed), factor=w / self.params.weight_cap
        )
        lane_reals = self.params.packing.reals_for(quantized.values.shape[0])
        count = chunk_count_for(lane_reals, tag_reals.shape[0], self.data_reals_per_chunk)
        weights = np.full(count, float(w))
        if mask is None:
            data = pack_lanes(quantized.values, self.params.layout)
        else:
            data, weights = masked_lanes_and_weights(quantized.values, w, count, masked_layout_of(self.params), mask)
        if tag_reals.shape[0]:
            data = np.concatenate([data, tag_reals])
        chunks = self._codec.encrypt(frame(data, self.data_reals_per_chunk, np.ones(count), weights), SCALE_BITS)
        manifest = Manifest(
            PROFILE_NAME,
            self.fingerprint,
            layout,
            layout.total,
            self.values_per_chunk,
            SCALE_BITS,
            tuple(chunk_digest(c) for c in chunks),
            self.params.describe(),
        )
        manifest.check_consistent()
        return CompactBatch(manifest, chunks, quantized.clipped, w, capped)

    def decrypt_mean(
        self, manifest: Manifest, chunks: Sequence[bytes], correction: np.ndarray | None = None
    ) -> CompactMean:
        """Decrypt an aggregate, verify it is an exact sum of valid contributions, return the mean.

        A masked aggregate needs its ``correction`` (crypto.secagg.unmask.mask_correction).
        """
        sums = self.decrypt_lane_sums(manifest, chunks, correction)
        scale = self.params.step * self.params.weight_cap / sums.total_weight
        if sums.tags is None:
            mean = np.multiply(sums.values, scale)  # int64 * float -> float64 in one pass
        else:  # the tags fill the layout's last tensor, dropped again below
            mean = np.empty(manifest.layout.total)
            np.multiply(sums.values, scale, out=mean[: sums.values.shape[0]])
            mean[sums.values.shape[0] :] = sums.tags
        tensors = unpack(mean, manifest.layout)
        tensors.pop(CONTRIBUTOR_TAGS, None)
        return CompactMean(tensors, sums.total_weight, sums.contributors, sums.tags)

    def decrypt_lane_sums(
        self, manifest: Manifest, chunks: Sequence[bytes], correction: np.ndarray | None = None
    ) -> LaneSums:
        """The exact integer sums of every value, with the decrypted contributor count and total weight.

        ``correction``: minus the total secure-aggregation mask, mod 2^w, in mask-vector order; centered
        (:func:`centered_correction`) and added to the lane sums and weight digits after decryption.
        """
        self._check_manifest(manifest, len(chunks))
        packing = self.params.packing
        centered = None
        if correction is not None:
            centered = centered_correction(self.params, manifest, correction)
        elif isinstance(packing, MaskedLaneLayout):
            raise CiphertextError(
                "this aggregate is masked (secure aggregation) and came without the secrets that remove the masks"
            )
        reals = to_integers(self._codec.decrypt(chunks), overwrite=True)
        grid = reals.reshape(len(chunks), -1)
        if centered is not None and isinstance(packing, MaskedLaneLayout):  # weights are masked: reduce them first
            digits = centered[centered.shape[0] - WEIGHT_DIGITS * len(chunks) :]  # two per chunk, after the lanes
            grid[:, 1] = unmasked_weights(grid[:, 1], packing, digits)
        contributors, total = self._check_headers(grid[:, :HEADER_REALS])
        data = grid[:, HEADER_REALS:].ravel()  # a copy, or a view of our own array: ours to consume
        count, tags = manifest.value_count, None
        last = manifest.layout.tensors[-1] if manifest.layout.tensors else None
        if last is not None and last.name == CONTRIBUTOR_TAGS:
            count -= last.size
            used = packing.reals_for(count)
            if data.shape[0] < used + last.size:
                raise CiphertextError("aggregate is too short for its contributor tags; refusing it")
            tags = data[used : used + last.size] / TAG_SCALE
            data[used : used + last.size] = 0  # what remains must be lanes and zero padding
        values = unpack_lanes(data, packing, count, contributors, overwrite=True)
        if centered is not None and isinstance(packing, MaskedLaneLayout):
            values = unmasked_lane_sums(values, packing, contributors, centered[:count])
        return LaneSums(values, contributors, total, tags)

    def decrypt_residues(self, manifest: Manifest, chunks: Sequence[bytes]) -> np.ndarray:
        """One masked upload as a key holder reads it (audits and collusion tests): uniform residues."""
        self._check_manifest(manifest, len(chunks))
        reals = to_integers(self._codec.decrypt(chunks), overwrite=True)
        return upload_residues(reals.reshape(len(chunks), -1), manifest, self.params)

    def _check_manifest(self, manifest: Manifest, chunk_count: int) -> None:
        if manifest.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"aggregate is under key {manifest.fingerprint}, this silo holds {self.fingerprint}"
            )
        if manifest.profile != PROFILE_NAME or manifest.scale_bits != SCALE_BITS:
            raise ManifestError(f"aggregate is profile {manifest.profile!r} at 2^{manifest.scale_bits}, not compact")
        if manifest.values_per_chunk != self.values_per_chunk or manifest.value_count != manifest.layout.total:
            raise ManifestError(
                f"aggregate packs {manifest.values_per_chunk} values per chunk; this job's lane layout packs "
                f"{self.values_per_chunk}"
            )
        if manifest.quantization != self.params.describe():
            raise ManifestError(
                f"aggregate was quantized as {manifest.quantization or 'nothing'}; this job quantizes as "
                f"{self.params.describe()}"
            )
        manifest.check_consistent()
        if chunk_count != manifest.chunk_count:
            raise ManifestError(f"aggregate has {chunk_count} chunks, its manifest lists {manifest.chunk_count}")

    def _check_headers(self, headers: np.ndarray) -> tuple[int, int]:
        counts, weights = headers[:, 0], headers[:, 1]
        contributors, total = int(counts[0]), int(weights[0])
        if (counts != contributors).any() or (weights != total).any():
            raise CiphertextError(
                "the chunks of this aggregate sum different sets of contributions (headers disagree); refusing it"
            )
        if not 1 <= contributors <= self.params.max_silos:
            raise CiphertextError(
                f"aggregate decrypts to {contributors} contributions; this job allows 1..{self.params.max_silos} "
                f"(more could carry between lanes): refusing it"
            )
        if not contributors <= total <= contributors * self.params.weight_cap:
            raise CiphertextError(
                f"decrypted total weight {total} is impossible for {contributors} contributions of weight "
                f"1..{self.params.weight_cap}: a contribution is corrupted or under another key"
            )
        return contributors, total
