"""Which layout of a round is released: the one most committed contributors agree on, alone.

Every declared layout (tensors, sizes, scale, quantization) sums apart for the whole round, so no
single contributor, say the fastest, fixes the layout for the others. At close the layout most
contributors committed to is released if it alone leads; contributors of other layouts are left out
and named (``layout_outvoted``); a tie releases nothing and names the competing layouts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from aggregator.core.uploads import OpenRound
from crypto.packing import Manifest


def layout_name(manifest: Manifest) -> str:
    """A short, bounded name for a layout in reasons and audit records (never the member's own text)."""
    tag = hashlib.sha256(repr(manifest.layout_key()).encode()).hexdigest()[:12]
    return f"layout {tag} ({manifest.value_count} values)"


@dataclass(frozen=True)
class LayoutVote:
    """A round's committed contributors grouped by the layout they committed (each list sorted)."""

    groups: dict[Any, list[str]]
    top: int  # contributors of the leading layout(s)
    leaders: list[Any]

    @classmethod
    def count(cls, open_round: OpenRound) -> LayoutVote:
        groups: dict[Any, list[str]] = {}
        for silo in sorted(open_round.contributors):
            groups.setdefault(open_round.layout_of[silo], []).append(silo)
        top = max((len(silos) for silos in groups.values()), default=0)
        return cls(groups, top, [key for key, silos in groups.items() if len(silos) == top])

    @property
    def tie(self) -> bool:
        """No layout alone leads: releasing either would let a minority decide."""
        return len(self.leaders) > 1

    @property
    def winner(self) -> Any | None:
        return self.leaders[0] if len(self.leaders) == 1 else None

    @property
    def contributors(self) -> list[str]:
        """The winner's contributors (none without a single winner)."""
        return self.groups.get(self.winner, []) if self.winner is not None else []

    def describe(self, open_round: OpenRound) -> str:
        return "; ".join(
            f"{layout_name(open_round.committed[key])} from {', '.join(silos)}" for key, silos in self.groups.items()
        )

    def outvoted(self, open_round: OpenRound) -> list[dict[str, Any]]:
        """One audit record's details per losing layout: its contributors are left out, never silently."""
        winner = self.winner
        return [
            {
                "contributors": silos,
                "layout": layout_name(open_round.committed[key]),
                "released_layout": layout_name(open_round.committed[winner]),
                "released_contributors": self.groups[winner],
            }
            for key, silos in self.groups.items()
            if key != winner
        ]
