"""Contributor tags: a silo counts, under encryption, who is really in an aggregate it is handed.

The aggregator says how many silos contributed, but it may lie. Each silo therefore appends to its
(weighted, encrypted) update one lane per job participant, all zero except its own, which holds a
tag value tau(round, lane). The aggregator cannot encrypt (seeded symmetric encryption under the
shared secret key) and only adds ciphertexts, so every lane of the decrypted aggregate is
c * tau(r, lane), where c is the coefficient the aggregator gave that silo's ciphertext in whatever
linear combination it computed. A silo accepts an aggregate only if every lane reads 0 or exactly
its tau for the round being applied, so:

- an upload counted twice (c = 2), negated (c = -1) or scaled shows as a wrong lane value;
- silos left out show as zero lanes, so the silo counts the real contributors, not the claimed ones;
- an aggregate (or an upload) from another round carries other tau values.

The tag values are derived from a key that only holders of the job's secret key have (see
:func:`tag_values`), so the aggregator does not know the targets and cannot hunt for a combination of
old uploads that hits them; with the plaintext profile the key is public, as is everything else.
Values lie in [TAG_LOW, TAG_HIGH), far apart compared with the CKKS error even at the statistics
round's scale 2^20 (max error measured 2.4e-3 for a sum of 8), so TAG_TOLERANCE decides clearly.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

from crypto.errors import CiphertextError

CONTRIBUTOR_TAGS = "__contributors__"  # the tensor name the tag lanes travel under in an update's layout
TAG_LOW, TAG_HIGH = 1.0, 1023.0
# CKKS error on one lane: ~1e-9 at scale 2^40, up to ~1e-2 at scale 2^20 with 64 contributors. A guess
# of an unknown tau succeeds with probability 2 * TAG_TOLERANCE / (TAG_HIGH - TAG_LOW) ~ 1e-4 per lane.
TAG_TOLERANCE = 0.05
PUBLIC_TAG_KEY = b"cipherfed plaintext profile: no secret"


class ContributorError(CiphertextError):
    """An aggregate whose contributor tags do not describe an honest sum of this round's uploads."""


def tag_key_from_secret(secret_material: bytes) -> bytes:
    """The tag key of a job key set: only holders of the CKKS secret key can compute it."""
    return hashlib.sha256(b"cipherfed contributor tag key v1\x00" + secret_material).digest()


def tag_values(tag_key: bytes, job_id: str, round_index: int, lanes: int) -> np.ndarray:
    """tau(round, lane) for every lane: pseudorandom in [TAG_LOW, TAG_HIGH), keyed, bound to job and round."""
    out = np.empty(lanes)
    for lane in range(lanes):
        mac = hmac.new(tag_key, f"{job_id}\x00{round_index}\x00{lane}".encode(), hashlib.sha256).digest()
        fraction = int.from_bytes(mac[:8], "big") / 2.0**64
        out[lane] = TAG_LOW + fraction * (TAG_HIGH - TAG_LOW)
    return out


def own_tag(tag_key: bytes, job_id: str, round_index: int, lanes: int, own_lane: int) -> np.ndarray:
    """What a silo appends to its update: zeros with its own tau in its own lane."""
    if not 0 <= own_lane < lanes:
        raise ValueError(f"lane {own_lane} is outside the job's {lanes} participants")
    tags = np.zeros(lanes)
    tags[own_lane] = tag_values(tag_key, job_id, round_index, lanes)[own_lane]
    return tags


@dataclass(frozen=True)
class ContributorCount:
    lanes: tuple[int, ...]  # the participant lanes that contributed exactly once

    @property
    def count(self) -> int:
        return len(self.lanes)


def verify_tags(
    decrypted: np.ndarray,
    tag_key: bytes,
    job_id: str,
    round_index: int,
    *,
    own_lane: int,
    own_required: bool,
    minimum: int,
) -> ContributorCount:
    """Count the contributors of a decrypted aggregate; raise ContributorError if it is not an honest sum.

    ``own_required``: this silo's upload was acknowledged, so its lane must be set (an aggregator that
    took the upload and then left it out is lying). ``minimum``: the fewest contributors acceptable.
    """
    lanes = decrypted.shape[0]
    expected = tag_values(tag_key, job_id, round_index, lanes)
    counted: list[int] = []
    for lane, (value, tau) in enumerate(zip(decrypted.tolist(), expected.tolist(), strict=True)):
        if abs(value - tau) <= TAG_TOLERANCE:
            counted.append(lane)
        elif abs(value) > TAG_TOLERANCE:
            raise ContributorError(
                f"contributor lane {lane} of round {round_index} reads {value / tau:.4g} times its tag: the aggregate "
                f"counts an upload more than once, scaled, negated or from another round"
            )
    if own_required and own_lane not in counted:
        raise ContributorError(
            f"round {round_index}: the aggregator acknowledged this silo's upload but the aggregate does not contain it"
        )
    if len(counted) < minimum:
        raise ContributorError(
            f"round {round_index}: the aggregate holds the uploads of {len(counted)} participants; "
            f"this silo applies none with fewer than {minimum}"
        )
    return ContributorCount(tuple(counted))
