"""Before a silo applies an aggregate: the aggregator's word is checked against what this silo knows.

Every check refuses (audited as ``aggregate_refused``, then the silo leaves the job) rather than apply
an aggregate that is not an honest sum of this round's contributions: chunk digests, the layout (this
silo's own upload's, never the aggregator's), decryption with the profile's own range checks, the
encrypted contributor tags (who really contributed, at least the site's minimum), and for profile
``compact`` the encrypted contribution count against the tags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.events import EventSink
from crypto.compact import CompactEncryptor, CompactMean
from crypto.contributors import ContributorError, verify_tags
from crypto.engine import UpdateEncryptor, WeightedMean, decrypt_weighted_mean
from crypto.errors import CryptoError
from crypto.packing import Manifest
from protocol.messages import check_digests
from silo_node.refusal import RoundRefused

LAYOUT_FIELDS = ("profile", "fingerprint", "layout", "value_count", "values_per_chunk", "scale_bits")


@dataclass(frozen=True)
class AggregateGate:
    """What one job's silo checks every aggregate with."""

    job_id: str
    name: str
    encryptor: UpdateEncryptor | CompactEncryptor
    events: EventSink
    lanes: int  # participants: one contributor tag lane each
    own_lane: int
    minimum: int  # fewest verified contributors this silo applies

    def _refuse(self, round_index: int, reason: str, **details: object) -> RoundRefused:
        self.events.record("aggregate_refused", self.name, job=self.job_id, round=round_index, reason=reason, **details)
        return RoundRefused([f"aggregate of round {round_index} refused: {reason}"])

    def open(
        self,
        round_index: int,
        manifest: Manifest,
        chunks: list[bytes],
        expected_layout: tuple[str, str, str, int, int, int],
        claimed: int,
        own_required: bool,
        correction: Callable[[Manifest], np.ndarray] | None = None,
    ) -> tuple[WeightedMean | CompactMean, int]:
        """The decrypted mean and the verified contributor count, or RoundRefused (audited).

        ``correction``: for a masked sum (secure aggregation), what removes the masks after decryption.
        """
        check_digests(manifest, chunks)
        got = manifest.layout_key()
        if got != expected_layout:  # swapped tensors or shifted lanes: the (unsigned) layout is not ours
            differ = [f for f, a, b in zip(LAYOUT_FIELDS, got, expected_layout, strict=True) if a != b]
            raise self._refuse(
                round_index,
                f"round {round_index}: the aggregate's {', '.join(differ)} differ from this silo's upload layout",
            )
        try:  # the same bytes decrypt the same way: a bad aggregate is the aggregator's doing, not bad luck
            if isinstance(self.encryptor, CompactEncryptor):
                unmask = None if correction is None else correction(manifest)
                mean: WeightedMean | CompactMean = self.encryptor.decrypt_mean(manifest, chunks, unmask)
            else:
                mean = decrypt_weighted_mean(self.encryptor, manifest, chunks)
        except CryptoError as exc:
            raise self._refuse(round_index, str(exc)) from None
        verified = self._verified_contributors(round_index, mean.tags, claimed, own_required)
        if isinstance(mean, CompactMean) and mean.contributors != verified:
            raise self._refuse(
                round_index,
                f"its encrypted header counts {mean.contributors} contributions but the contributor tags verify "
                f"{verified}",
            )
        return mean, verified

    def _verified_contributors(self, round_index: int, tags: np.ndarray | None, claimed: int, own: bool) -> int:
        """Count, from the decrypted tag lanes, who really contributed; refuse anything but an honest sum."""
        try:
            if tags is None or tags.shape[0] != self.lanes:
                raise ContributorError(
                    f"round {round_index}: the aggregate has no contributor tags ({self.lanes} lanes)"
                )
            return verify_tags(
                tags,
                self.encryptor.tag_key,
                self.job_id,
                round_index,
                own_lane=self.own_lane,
                own_required=own,
                minimum=self.minimum,
            ).count
        except ContributorError as exc:
            raise self._refuse(round_index, str(exc), claimed=claimed) from None
