"""Named CKKS parameter profiles, validated against the HomomorphicEncryption.org standard.

A profile is chosen by name in job specs and policies, so the parameters behind a name must never
silently become weaker: :func:`validate_parameters` refuses anything above the 128-bit budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crypto.errors import InsecureParametersError

# Largest total coefficient-modulus bit count for 128-bit classical security with a ternary
# secret, per poly modulus degree (HomomorphicEncryption.org security standard, Table 1).
HE_STANDARD_128_MAX_BITS: dict[int, int] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

Engine = Literal["seal-seeded", "tenseal-public", "plain"]


@dataclass(frozen=True)
class Profile:
    """Parameters of one CKKS configuration and how it is used."""

    name: str
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    scale_bits: int
    engine: Engine
    galois_keys: bool = False

    @property
    def values_per_ciphertext(self) -> int:
        """Reals carried by one ciphertext.

        The seeded engine packs two reals into each complex slot (re + i*im), so it carries
        N reals; TenSEAL's real-vector API carries N/2.
        """
        if self.engine == "seal-seeded":
            return self.poly_modulus_degree
        if self.engine == "plain":
            return 8192
        return self.poly_modulus_degree // 2


def validate_parameters(profile: Profile) -> None:
    """Raise :class:`InsecureParametersError` unless the profile is usable at 128-bit security."""
    if profile.engine == "plain":
        return
    n = profile.poly_modulus_degree
    if n not in HE_STANDARD_128_MAX_BITS:
        raise InsecureParametersError(
            f"profile {profile.name!r}: poly_modulus_degree {n} is not one of "
            f"{sorted(HE_STANDARD_128_MAX_BITS)} (HomomorphicEncryption.org table)"
        )
    total = sum(profile.coeff_modulus_bits)
    limit = HE_STANDARD_128_MAX_BITS[n]
    if total > limit:
        raise InsecureParametersError(
            f"profile {profile.name!r}: coefficient modulus of {total} bits exceeds the {limit}-bit "
            f"maximum for 128-bit security at N={n}; use fewer or smaller primes, or a larger N"
        )
    if len(profile.coeff_modulus_bits) < 2:
        raise InsecureParametersError(
            f"profile {profile.name!r}: needs at least two primes (one data prime and the special prime)"
        )
    if any(not 20 <= bits <= 60 for bits in profile.coeff_modulus_bits):
        raise InsecureParametersError(f"profile {profile.name!r}: every prime must be 20..60 bits")
    if profile.scale_bits >= profile.coeff_modulus_bits[0]:
        raise InsecureParametersError(
            f"profile {profile.name!r}: scale 2^{profile.scale_bits} leaves no room below the "
            f"{profile.coeff_modulus_bits[0]}-bit data prime"
        )


PROFILES: dict[str, Profile] = {
    # Additions only: one data prime; seeded symmetric encryption halves the upload.
    "sum": Profile("sum", 8192, (60, 40), 40, "seal-seeded"),
    # One ciphertext-plaintext multiplication (vertical gradients): public-key encryption so that
    # passive parties can encrypt under the active party's key; no Galois keys (no rotations).
    "vertical": Profile("vertical", 8192, (60, 40, 60), 40, "tenseal-public"),
    # Plaintext comparison runs; a consortium policy may forbid it.
    "none": Profile("none", 0, (), 0, "plain"),
}


# Profiles whose values are quantized to integers before encryption: a job using one also fixes
# the quantization (bits, bound, consortium size, weight cap; see crypto/compact.py).
QUANTIZED_PROFILES: dict[str, Profile] = {
    # Same SEAL parameters as `sum`, at the scale crypto/lanes.py derives from the measured noise
    # (benchmarks/lane_headroom.py): quantized integers, two lanes per real, summed exactly.
    "compact": Profile("compact", 8192, (60, 40), 19, "seal-seeded"),
}


def get_profile(name: str) -> Profile:
    """The validated profile of that name, or a clear error listing the known ones."""
    profile = PROFILES.get(name) or QUANTIZED_PROFILES.get(name)
    if profile is None:
        raise InsecureParametersError(
            f"unknown HE profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}; "
            f"quantized: {', '.join(sorted(QUANTIZED_PROFILES))}"
        )
    validate_parameters(profile)
    return profile
