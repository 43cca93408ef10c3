"""Secure aggregation over profile ``compact``: masked lanes, mask lengths and the aggregator's correction.

With ``CompactParams.secure_aggregation`` every silo masks its quantized lane values AND its weight
header with SecAgg masks mod 2^w (w = the unmasked lane width, crypto/lanes.py) before encryption,
so a colluding key holder that decrypts one upload reads one-time-padded residues. The aggregator
sums the masked ciphertexts as usual and releases the sum still masked, with the secrets the
survivors' shares revealed; each silo expands the total mask's negation (the ``correction``,
crypto.secagg.unmask.mask_correction), decrypts and splits the masked lane sums, adds the centered
correction lane by lane (:func:`centered_correction`, :func:`unmasked_weights`,
:func:`crypto.lanes.unmasked_lane_sums`), reduces every lane mod 2^w and centers it. The correction is
added to integers after unpacking, not laid out as reals before it: the same sums (every lane stays
within its limit either way), without building and packing a second aggregate-sized vector.

The mask vector of one upload is [its lane values in manifest order (contributor tags excluded),
then, per chunk, the two digits of its weight], uint64 in [0, 2^w). Its length depends only on the manifest and the job
parameters (:func:`mask_length_for`), so silo and aggregator agree on it without talking. The count
header (real 0, always 1) and the tag reals stay unmasked: the count is public anyway, and tags are
checked against per-silo keys after decryption.

Weights: header real 1 of every chunk carries the weight as two masked lanes, the base-2^b digits
(d0, d1) of w_i (b = bits, the quantization width). Each digit sum over at most max_silos silos is
below max_silos * 2^b <= 2^w, so it is recovered exactly as the non-negative residue mod 2^w, and the
total weight is D0 + 2^b * D1. One masked weight per chunk would cap a silo's weight at
(2^w - 1) / max_silos: 2047 at 16 silos, 127 at 64, below a typical sample count. Two digits allow
weight_cap up to 2^(2b) - 1 (4,194,303 at 16 silos, 16,383 at 64), checked when the parameters are built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from crypto.errors import ManifestError, ValueRangeError
from crypto.lanes import MaskedLaneLayout, add_correction, center, pack_lanes, unpack_lanes
from crypto.packing import HEADER_REALS, Manifest

if TYPE_CHECKING:
    from crypto.compact import CompactParams

WEIGHT_DIGITS = 2  # masked lanes of header real 1 (every masked layout has at least two lanes per real)

# The masked vector of a uint64 vector mod 2^w; it may write into its argument and return it.
Mask = Callable[[np.ndarray], np.ndarray]


def mask_length(params: CompactParams, value_count: int, chunk_count: int, tag_count: int = 0) -> int:
    """Length of one upload's mask vector: its lane values (tags excluded) plus two weight digits per chunk.

    ``value_count`` is the manifest's (tags included); ``tag_count`` the size of its tag tensor.
    """
    masked_layout_of(params)
    for name, n in (("value_count", value_count), ("chunk_count", chunk_count), ("tag_count", tag_count)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueRangeError(f"secure aggregation: {name} must be a non-negative integer, got {n!r}")
    if tag_count >= value_count or chunk_count < 1:
        raise ValueRangeError(
            f"secure aggregation: an upload of {value_count} values ({tag_count} of them tags) in {chunk_count} "
            f"chunks has no lane value to mask"
        )
    return value_count - tag_count + WEIGHT_DIGITS * chunk_count


def mask_length_for(params: CompactParams, manifest: Manifest) -> int:
    """:func:`mask_length` of an upload or aggregate, from its (signed or recomputed) manifest.

    Refuses a manifest that was not quantized with these secure-aggregation parameters: the lengths
    would not match the silos' masks and the unmasking would silently produce garbage.
    """
    if manifest.quantization != params.describe():
        raise ManifestError(
            f"manifest was quantized as {manifest.quantization or 'nothing'}; this secure-aggregation job "
            f"quantizes as {params.describe()}"
        )
    manifest.check_consistent()
    return mask_length(params, manifest.value_count, manifest.chunk_count, manifest.tag_count())


def masked_layout_of(params: CompactParams) -> MaskedLaneLayout:
    """The params' masked lane layout, refusing params without secure aggregation."""
    layout = params.packing
    if not params.secure_aggregation or not isinstance(layout, MaskedLaneLayout):
        raise ValueRangeError("these compact parameters have secure_aggregation off: there is no mask to apply")
    return layout


def check_residues(vector: object, length: int, w: int, what: str) -> np.ndarray:
    """``vector`` as uint64 of exactly ``length`` values in [0, 2^w), else a ValueRangeError naming ``what``."""
    array = np.asarray(vector)
    if array.dtype != np.uint64 or array.ndim != 1 or array.shape[0] != length:
        raise ValueRangeError(
            f"{what} must be a uint64 vector of {length} values, got {array.dtype} with shape {array.shape}"
        )
    if array.size and int(array.max()) >= 1 << w:
        raise ValueRangeError(f"{what} holds a value >= 2^{w}; every value must be a residue mod 2^{w}")
    return array


def max_masked_weight(layout: MaskedLaneLayout) -> int:
    """Largest weight_cap two base-2^bits digits carry: 2^(2 * bits) - 1."""
    return (1 << (WEIGHT_DIGITS * layout.bits)) - 1


def masked_lanes_and_weights(
    quantized: np.ndarray, weight: int, chunk_count: int, layout: MaskedLaneLayout, mask: Mask
) -> tuple[np.ndarray, np.ndarray]:
    """Silo side: mask [values mod 2^w, weight digits per chunk]; returns (lane reals, weight real per chunk)."""
    w, n = layout.mask_bits, quantized.shape[0]
    if not 0 <= weight <= max_masked_weight(layout):
        raise ValueRangeError(f"weight {weight} does not fit two {layout.bits}-bit digits")
    modulus = np.uint64((1 << w) - 1)
    plain = np.empty(n + WEIGHT_DIGITS * chunk_count, dtype=np.uint64)
    values = plain[:n]
    np.copyto(values, np.asarray(quantized, dtype=np.int64), casting="unsafe")  # two's complement: -v -> 2^64 - v
    values &= modulus  # in place: each temporary of a 1M-value update costs milliseconds of page faults
    plain[n::2] = weight & ((1 << layout.bits) - 1)  # digit 0 of every chunk
    plain[n + 1 :: 2] = weight >> layout.bits  # digit 1 of every chunk
    masked = check_residues(mask(plain), plain.shape[0], w, "the masked vector returned by `mask`")
    centered = center(masked, w, in_place=masked is plain)  # a mask that wrote into `plain` handed it back
    return pack_lanes(centered[:n], layout), weight_reals(centered[n:], layout)


def weight_reals(centered_digits: np.ndarray, layout: MaskedLaneLayout) -> np.ndarray:
    """Centered (digit 0, digit 1) pairs, one pair per chunk -> header real 1 of each chunk (exact float64)."""
    pairs = centered_digits.reshape(-1, WEIGHT_DIGITS)
    return pairs[:, 0].astype(np.float64) + pairs[:, 1].astype(np.float64) * float(1 << layout.lane_bits)


def unmasked_weights(headers: np.ndarray, layout: MaskedLaneLayout, digits: np.ndarray) -> np.ndarray:
    """Decrypted header reals 1 (int64) plus their centered correction digits -> each chunk's total weight.

    ``digits`` holds (digit 0, digit 1) per chunk, the tail of :func:`centered_correction`. Each digit
    lane is split off centered, corrected, bounded like any masked lane sum of up to max_silos
    contributions plus the correction, and reduced to its non-negative residue mod 2^w; the total is
    D0 + 2^bits * D1. The caller then checks the totals for plausibility (equal across chunks, within
    contributors * 1..weight_cap).
    """
    lane_bits, w = layout.lane_bits, layout.mask_bits
    pairs = np.asarray(digits, dtype=np.int64).reshape(-1, WEIGHT_DIGITS)
    low = center(headers, lane_bits)
    high = (np.asarray(headers, dtype=np.int64) - low) >> lane_bits
    for digit, fix in ((low, pairs[:, 0]), (high, pairs[:, 1])):
        add_correction(digit, fix, layout, layout.max_silos, "a decrypted weight digit")
    modulus = np.int64((1 << w) - 1)
    return (low & modulus) + ((high & modulus) << layout.bits)


def frame(data: np.ndarray, per: int, counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Reals of whole ciphertexts: each chunk's [count, weight] header, then ``per`` data reals (zero-padded)."""
    chunks = counts.shape[0]
    grid = np.zeros((chunks, HEADER_REALS + per))
    grid[:, 0] = counts
    grid[:, 1] = weights
    padded = np.zeros(chunks * per)
    padded[: data.shape[0]] = data
    grid[:, HEADER_REALS:] = padded.reshape(chunks, per)
    return grid.ravel()


def centered_correction(params: CompactParams, manifest: Manifest, correction: np.ndarray) -> np.ndarray:
    """Silo side: the correction of a masked aggregate, checked and centered (int64, mask-vector order).

    ``correction`` (minus the total mask mod 2^w, from :func:`crypto.secagg.unmask.mask_correction`) came
    from secrets the aggregator relayed, so its type, length and range are checked first. Its first
    values correct the lane sums (:func:`crypto.lanes.unmasked_lane_sums`), its last two per chunk the
    weight digits (:func:`unmasked_weights`). Centered, every term is at most 2^(w-1): a lane of up to
    max_silos masked values plus it stays within the lane limit the masked layout was sized for.
    """
    layout = masked_layout_of(params)
    length = mask_length_for(params, manifest)
    values = check_residues(correction, length, layout.mask_bits, "the secure-aggregation correction")
    return center(values, layout.mask_bits)


def upload_residues(grid: np.ndarray, manifest: Manifest, params: CompactParams) -> np.ndarray:
    """Decrypted integer reals of ONE masked upload (chunks x reals) -> its masked vector, in [0, 2^w).

    What a key holder (a silo, or anyone holding its key) reads from another silo's upload: the same
    order as the mask vector (lane values, then the weight digits of each chunk). Used by audits and
    the collusion tests; an honest silo never decrypts a single upload.
    """
    layout = masked_layout_of(params)
    tags = manifest.tag_count()
    count = manifest.value_count - tags
    data = np.array(grid[:, HEADER_REALS:], dtype=np.int64).ravel()
    used = layout.reals_for(count)
    data[used : used + tags] = 0  # the tag reals ride after the lanes, unmasked
    lanes = unpack_lanes(data, layout, count, 1)
    headers = np.asarray(grid[:, 1], dtype=np.int64)
    low = center(headers, layout.lane_bits)
    digits = np.empty(WEIGHT_DIGITS * headers.shape[0], dtype=np.int64)
    digits[0::2], digits[1::2] = low, (headers - low) >> layout.lane_bits
    modulus = np.int64((1 << layout.mask_bits) - 1)
    return (np.concatenate([lanes, digits]) & modulus).astype(np.uint64)
