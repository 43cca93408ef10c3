"""Integer lanes inside one CKKS real: layout derivation, packing and exact unpacking.

A real X carries L signed lanes of w bits each as X = sum_j lane_j * 2^(j*w). Ciphertext addition
adds the reals, hence every lane, and as long as each lane's sum stays inside its own range and
|X| stays inside the real's exact-integer range, the decrypted, rounded X splits back into the
exact lane sums.

Signed lanes with a centered (balanced) decomposition rather than offset binary, because:
- the exact range of a CKKS real is symmetric (±2^K), and signed lanes use all of it, while
  offset-binary reals are always positive and waste its negative half (one bit per real);
- offset binary must subtract n * offset after decryption, with n the number of contributions; the
  aggregator reports n and may lie, so the decoding would depend on an untrusted number;
- a zero lane (padding, an absent value) is a zero real, and the sum of n values each within
  ±(2^(b-1) - 1) stays within ±n*(2^(b-1) - 1) < 2^(w-1) with w = b + ceil(log2 n): the lane
  needs exactly the b + ceil(log2 n) bits of headroom the issue names, no more.

Where the numbers come from (``python -m benchmarks.lane_headroom``, N=8192, coeff [60,40],
complex packing, seeded symmetric encryption, 8 ciphertexts of 8192 reals per contribution, random
and constant worst-case patterns at the modulus limit, scales 2^14..2^40, two runs of 2026-11-22):
the largest absolute error on any decoded real after summing 64 ciphertexts is 2^12.8..2^13.0 / 2^S,
whatever S (2^9.9 for one ciphertext, 2^11.9 for 16). We take the smallest scale at which that
error is SAFETY_FACTOR = 12 times below the integer-check tolerance 1/4: S = 19 (measured 0.0143
and 0.0138 against a limit of 0.0208; the worst error at any scale, 2^13.02, would still be 0.0157;
S = 18 measured 0.0286 and 0.0271). There the modulus limit
sqrt(2) * 2^K * 2^S < q/2 gives K = 39: every integer of magnitude <= 2^39 decodes exactly,
with a worst error 35x below the rounding threshold 1/2 (for the roughly Gaussian error, over a
hundred standard deviations).

Two lanes of w bits need |X| <= (2^(w-1) - n) * (2^w + 1) < 2^(2w-1), so K = 39 holds two
20-bit lanes: 16-bit values for up to 16 silos, 14-bit values for up to 64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from crypto.errors import CiphertextError, ValueRangeError
from crypto.quantize import MAX_BITS, MIN_BITS, max_level

# Measured by benchmarks/lane_headroom.py (see the module docstring); change only with a new run.
SCALE_BITS = 19
EXACT_INTEGER_BITS = 39
MEASURED_MAX_ERROR_64_SUMS = 0.0143  # worst |decoded - true| on a sum of 64 ciphertexts at S = 19
INTEGER_TOLERANCE = 0.25  # a decoded real farther than this from an integer is not a valid sum
SAFETY_FACTOR = 12
assert MEASURED_MAX_ERROR_64_SUMS * SAFETY_FACTOR <= INTEGER_TOLERANCE
MAX_SILOS = 64  # the headroom above was measured for sums of up to 64 ciphertexts
MIN_LANES = 2  # with one lane per real the profile is `sum` with less precision: refuse it


@dataclass(frozen=True)
class LaneLayout:
    """How b-bit values of up to ``max_silos`` contributors sit in the reals of a ciphertext."""

    bits: int
    max_silos: int
    lane_bits: int
    lanes_per_real: int

    @property
    def level(self) -> int:
        """Largest |value| of one contribution in one lane."""
        return max_level(self.bits)

    def lane_limit(self, contributors: int) -> int:
        """Largest |lane sum| of ``contributors`` contributions."""
        return contributors * self.level

    def reals_for(self, values: int) -> int:
        return -(-values // self.lanes_per_real)


def _headroom_bits(max_silos: int) -> int:
    return math.ceil(math.log2(max_silos)) if max_silos > 1 else 0


def _largest_real(lane_sum: int, lane_bits: int, lanes: int) -> int:
    """|X| when every lane holds its largest sum: the figure that must stay within 2^K."""
    return lane_sum * sum(1 << (j * lane_bits) for j in range(lanes))


def _lanes_that_fit(bits: int, max_silos: int) -> int:
    lane_bits = bits + _headroom_bits(max_silos)
    lane_sum = max_silos * max_level(bits)
    lanes = 0
    while _largest_real(lane_sum, lane_bits, lanes + 1) <= 1 << EXACT_INTEGER_BITS:
        lanes += 1
    return lanes


def max_bits_for(max_silos: int, lanes: int = MIN_LANES) -> int:
    """Widest quantization that still gives ``lanes`` lanes per real for that many silos (0 if none)."""
    best = 0
    for bits in range(MIN_BITS, MAX_BITS + 1):
        if _lanes_that_fit(bits, max_silos) >= lanes:
            best = bits
    return best


def max_silos_for(bits: int, lanes: int = MIN_LANES) -> int:
    """Largest consortium (<= MAX_SILOS) for which b-bit values still get ``lanes`` lanes (0 if none)."""
    best = 0
    for silos in range(1, MAX_SILOS + 1):
        if _lanes_that_fit(bits, silos) >= lanes:
            best = silos
    return best


def compact_layout(bits: int, max_silos: int, lanes: int | None = None) -> LaneLayout:
    """The lane layout for b-bit values summed over up to ``max_silos`` contributions.

    ``lanes`` defaults to as many as the measured exact range holds; a given ``lanes`` is checked.
    Any combination under which a lane sum could carry into its neighbour, or the real exceed its
    exact-integer range, is refused with a message that says what to change.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueRangeError(f"compact profile: bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if isinstance(max_silos, bool) or not isinstance(max_silos, int) or not 1 <= max_silos <= MAX_SILOS:
        raise ValueRangeError(
            f"compact profile: max_silos must be an integer in 1..{MAX_SILOS} (the lane headroom was "
            f"measured for sums of up to {MAX_SILOS} ciphertexts), got {max_silos!r}"
        )
    lane_bits = bits + _headroom_bits(max_silos)
    fit = _lanes_that_fit(bits, max_silos)
    wanted = fit if lanes is None else lanes
    if not isinstance(wanted, int) or wanted < MIN_LANES or wanted > fit:
        raise ValueRangeError(_refusal(bits, max_silos, lane_bits, fit, wanted))
    return LaneLayout(bits, max_silos, lane_bits, wanted)


def _refusal(bits: int, max_silos: int, lane_bits: int, fit: int, wanted: object) -> str:
    need = max(MIN_LANES, wanted) if isinstance(wanted, int) else MIN_LANES
    fixes = []
    if (b := max_bits_for(max_silos, need)) >= MIN_BITS:
        fixes.append(f"lower bits to at most {b}")
    if (s := max_silos_for(bits, need)) >= 1:
        fixes.append(f"lower max_silos to at most {s}")
    fixes.append("or use the `sum` profile (one value per real, no quantization)")
    return (
        f"compact profile: {bits}-bit values summed over up to {max_silos} silos need {lane_bits}-bit lanes "
        f"(bits + ceil(log2 silos)); a CKKS real holds integers up to 2^{EXACT_INTEGER_BITS} exactly, so "
        f"{fit} such lane(s) fit without carrying into each other, and {need} are needed; " + ", ".join(fixes)
    )


def pack_lanes(values: np.ndarray, layout: LaneLayout) -> np.ndarray:
    """Signed integers (|v| <= level) -> reals holding ``lanes_per_real`` of them each (float64, exact)."""
    ints = np.asarray(values, dtype=np.int64)
    if ints.size and (int(ints.max()) > layout.level or int(ints.min()) < -layout.level):
        raise ValueRangeError(f"a lane value exceeds ±{layout.level}, the range of {layout.bits}-bit values")
    # Lane-major: lane j of real k holds value j * R + k (R reals), so every step below, and the
    # inverse in unpack_lanes, works on contiguous blocks. Float64 arithmetic is exact here:
    # every partial sum is an integer of magnitude <= 2^39 < 2^53.
    count = ints.shape[0]
    used = layout.reals_for(count)
    reals = np.zeros(used)
    reals[: min(used, count)] = ints[:used]
    for j in range(1, layout.lanes_per_real):
        block = ints[j * used : (j + 1) * used]
        reals[: block.shape[0]] += block * float(1 << (j * layout.lane_bits))
    return reals


def to_integers(reals: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Round decoded reals to integers, refusing any that is not a valid exact sum.

    With ``overwrite`` the caller gives up ``reals`` (its contents are destroyed), which saves a
    temporary the size of the aggregate.

    A real farther than INTEGER_TOLERANCE from an integer, or beyond the exact range, cannot come
    from adding honest contributions under this key (their error is 0.0143 at most): it is what a
    contribution under another key, or a corrupted one, decrypts to (uniform noise of magnitude
    ~2^39, each real passing by chance with probability about 1/2 at most).
    """
    nearest = np.rint(reals)
    if reals.size:
        off = np.subtract(reals, nearest, out=reals) if overwrite else reals - nearest
        worst_off = max(-float(off.min()), float(off.max()))
        peak = max(-float(nearest.min()), float(nearest.max()))
        if not worst_off <= INTEGER_TOLERANCE or not peak <= 2.0**EXACT_INTEGER_BITS:
            raise CiphertextError(
                f"decrypted values are not exact integer sums (off by up to {worst_off:.3g}, magnitude up to "
                f"{peak:.3g}, exact up to 2^{EXACT_INTEGER_BITS}): a contribution was encrypted under another key, "
                f"corrupted, or more contributions were summed than the job allows; this aggregate cannot be used"
            )
    return nearest.astype(np.int64)


def unpack_lanes(
    reals: np.ndarray, layout: LaneLayout, count: int, contributors: int, overwrite: bool = False
) -> np.ndarray:
    """Exact integer reals -> the first ``count`` lane sums; every lane checked against its limit.

    ``reals`` may be longer than the reals that carry ``count`` values (ciphertext padding); the
    extra reals, and the lanes beyond ``count``, must be zero (``overwrite``: as in to_integers).
    A lane (the top one included, which takes whatever the lower lanes leave) outside
    ±lane_limit(contributors) means a sum overflowed or was tampered with: refused.
    """
    used = layout.reals_for(count)
    if reals.shape[0] < used:
        raise CiphertextError(f"aggregate holds {reals.shape[0]} reals, {used} are needed for {count} values")
    if reals[used:].any():
        raise CiphertextError("padding reals of the aggregate are not zero: it was tampered with; refusing it")
    # consumed lane by lane below: a copy unless the caller gave ``reals`` up (``overwrite``)
    rest = reals[:used] if overwrite and reals.dtype == np.int64 else np.array(reals[:used], dtype=np.int64)
    lanes = layout.lanes_per_real
    half = np.int64(1 << (layout.lane_bits - 1))
    mask = np.int64((1 << layout.lane_bits) - 1)
    grid = np.empty((lanes, rest.shape[0]), dtype=np.int64)
    for j in range(lanes - 1):
        low = grid[j]
        np.add(rest, half, out=low)
        np.bitwise_and(low, mask, out=low)
        low -= half  # centered residue in [-2^(w-1), 2^(w-1))
        rest -= low
        rest >>= layout.lane_bits
    grid[lanes - 1] = rest  # the top lane is what is left; the limit check below bounds it too
    limit = layout.lane_limit(contributors)
    flat = grid.ravel()  # lane-major, as pack_lanes lays the values out
    if flat.size and (int(flat.max()) > limit or int(flat.min()) < -limit):
        raise CiphertextError(
            f"a decrypted lane sum is outside ±{limit} (the most {contributors} contributions of "
            f"{layout.bits}-bit values can reach): the sum overflowed or was tampered with; refusing it"
        )
    if flat[count:].any():
        raise CiphertextError("padding lanes of the aggregate are not zero: it was tampered with; refusing it")
    return flat[:count]


# ---- masked lanes (secure aggregation) --------------------------------------------------------------
#
# A silo's lane value v (|v| <= level) is masked as m = (v + mask) mod 2^w, w = the unmasked lane width
# bits + ceil(log2 max_silos), and sent CENTERED in [-2^(w-1), 2^(w-1)). The aggregate lane then holds
# the sum of up to max_silos masked values plus the aggregator's centered correction: up to
# max_silos + 1 terms of magnitude <= 2^(w-1), so the lane needs w + ceil(log2(max_silos + 1)) bits.
# The silo reduces the decrypted lane mod 2^w and centers it: the true sum |sum v| <= max_silos * level
# < 2^(w-1) comes back exactly.


@dataclass(frozen=True)
class MaskedLaneLayout(LaneLayout):
    """Lanes that carry centered values masked mod 2^mask_bits (one-time pads), not raw quantized values.

    ``level`` and ``lane_limit`` describe the masked values, so :func:`pack_lanes` and
    :func:`unpack_lanes` work unchanged; ``value_level`` is the quantized values' own bound.
    """

    mask_bits: int = 0

    @property
    def level(self) -> int:
        return 1 << (self.mask_bits - 1)

    @property
    def value_level(self) -> int:
        return max_level(self.bits)

    def lane_limit(self, contributors: int) -> int:
        """Largest |lane| of ``contributors`` masked values plus one correction, before reduction."""
        return (contributors + 1) * self.level

    def corrected_range(self, contributors: int) -> tuple[int, int]:
        """Exactly where a lane of ``contributors`` centered masked values plus the centered correction lies:
        each term is in [-2^(w-1), 2^(w-1) - 1], so the top is one short of ``lane_limit`` per term (at
        max_silos + 1 a power of two, ``lane_limit`` itself is 2^(L-1), which no honest lane reaches)."""
        terms = contributors + 1
        return -terms * self.level, terms * (self.level - 1)


def _masked_widths(bits: int, max_silos: int) -> tuple[int, int]:
    """(mask width w, masked lane width L) for b-bit values over up to ``max_silos`` silos."""
    w = bits + _headroom_bits(max_silos)
    return w, w + math.ceil(math.log2(max_silos + 1))


def _masked_lanes_that_fit(bits: int, max_silos: int) -> int:
    w, lane_bits = _masked_widths(bits, max_silos)
    lane_sum = (max_silos + 1) << (w - 1)
    lanes = 0
    while _largest_real(lane_sum, lane_bits, lanes + 1) <= 1 << EXACT_INTEGER_BITS:
        lanes += 1
    return lanes


def max_masked_bits_for(max_silos: int, lanes: int = MIN_LANES) -> int:
    """Widest quantization whose masked lanes still fit ``lanes`` per real for that many silos (0 if none).

    The default ``bits`` of a secure-aggregation job: 15 for 4 silos, 13 for 8, 11 for 16, 7 for 64.
    """
    best = 0
    for bits in range(MIN_BITS, MAX_BITS + 1):
        if _masked_lanes_that_fit(bits, max_silos) >= lanes:
            best = bits
    return best


def max_masked_silos_for(bits: int, lanes: int = MIN_LANES) -> int:
    """Largest consortium (<= MAX_SILOS) for which masked b-bit values still get ``lanes`` lanes (0 if none)."""
    best = 0
    for silos in range(1, MAX_SILOS + 1):
        if _masked_lanes_that_fit(bits, silos) >= lanes:
            best = silos
    return best


def masked_layout(bits: int, max_silos: int) -> MaskedLaneLayout:
    """The lane layout of masked b-bit values summed over up to ``max_silos`` silos, plus one correction.

    Refused, saying what to lower, when fewer than two masked lanes fit a real's exact range.
    """
    plain = compact_layout(bits, max_silos)  # validates bits and max_silos with the usual messages
    w, lane_bits = _masked_widths(bits, max_silos)
    fit = _masked_lanes_that_fit(bits, max_silos)
    if fit < MIN_LANES:
        fixes = []
        if (b := max_masked_bits_for(max_silos)) >= MIN_BITS:
            fixes.append(f"lower bits to at most {b}")
        if (s := max_masked_silos_for(bits)) >= 1:
            fixes.append(f"lower max_silos to at most {s}")
        fixes.append("or turn secure aggregation off")
        raise ValueRangeError(
            f"secure aggregation: {bits}-bit values over up to {max_silos} silos are masked mod 2^{w} and summed "
            f"with one correction into {lane_bits}-bit lanes (w + ceil(log2(silos + 1))); a CKKS real holds "
            f"integers up to 2^{EXACT_INTEGER_BITS} exactly, so {fit} such lane(s) fit and {MIN_LANES} are "
            f"needed; " + ", ".join(fixes)
        )
    assert plain.lane_bits == w
    return MaskedLaneLayout(bits, max_silos, lane_bits, fit, mask_bits=w)


def center(residues: np.ndarray, w: int, in_place: bool = False) -> np.ndarray:
    """Integers mod 2^w (any int64/uint64 representative) -> the centered representative in [-2^(w-1), 2^(w-1)).

    ``in_place`` overwrites a 64-bit integer vector the caller owns (and returns it viewed as int64):
    a 1M-value update then costs no fresh 8 MB array, whose page faults cost more than the arithmetic.
    """
    half = np.int64(1 << (w - 1))
    array = np.asarray(residues)
    if in_place and array.dtype in (np.int64, np.uint64):
        low = array.view(np.int64)  # two's complement: the same bits are the same residue mod 2^w
    else:
        low = array.astype(np.int64, copy=True)  # two's complement wrap keeps the residue mod 2^w
    low += half
    low &= np.int64((1 << w) - 1)
    low -= half
    return low


def add_correction(
    sums: np.ndarray, correction: np.ndarray, layout: MaskedLaneLayout, contributors: int, what: str
) -> np.ndarray:
    """``sums`` (int64, the caller's) += the centered ``correction``, in place; refused (naming ``what``) unless
    every corrected value lies where ``contributors`` masked values plus one correction can
    (:meth:`MaskedLaneLayout.corrected_range`): an aggregator that adds a multiple of 2^w is caught here."""
    sums += correction
    low, high = layout.corrected_range(contributors)
    if sums.size and (int(sums.max()) > high or int(sums.min()) < low):
        raise CiphertextError(
            f"{what} is outside [{low}, {high}] (where {contributors} masked values and one correction can reach): "
            "the sum overflowed or was tampered with; refusing it"
        )
    return sums


def unmasked_lane_sums(
    lanes: np.ndarray, layout: MaskedLaneLayout, contributors: int, correction: np.ndarray
) -> np.ndarray:
    """Masked lane sums plus their centered correction -> the exact sums of the quantized values.

    ``lanes`` (int64, from :func:`unpack_lanes`) is consumed: the correction is added in place, each
    corrected lane must lie where contributors masked values plus one correction can
    (:meth:`MaskedLaneLayout.corrected_range`), then it is reduced mod 2^w and centered. Without the
    right correction the residues are uniform mod 2^w and fall outside ±contributors * level with
    probability 1 - contributors / 2^(bits-1+headroom) per lane: refused.
    """
    sums = np.asarray(lanes)
    if sums.dtype != np.int64 or sums.shape != np.shape(correction):
        raise CiphertextError(f"{sums.shape[0]} masked lane sums need a correction of the same length, as int64")
    sums = add_correction(sums, correction, layout, contributors, "a corrected lane")
    sums = center(sums, layout.mask_bits, in_place=True)
    limit = contributors * layout.value_level
    if sums.size and (int(sums.max()) > limit or int(sums.min()) < -limit):
        raise CiphertextError(
            f"an unmasked lane sum is outside ±{limit} (the most {contributors} contributions of {layout.bits}-bit "
            f"values can reach): the masks were not removed (missing or wrong correction) or the sum was "
            f"tampered with; refusing it"
        )
    return sums
