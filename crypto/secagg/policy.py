"""Validating a secure-aggregation policy: threshold t, minimum participants, neighbour graph.

The rules, and why:
- at least 3 participants: with 2, the aggregate minus your own update is the other's update;
- t > half of the share holders (the other members, or the k neighbours in a sparse graph): two
  disjoint survivor sets can then never both reach t, the basis of the split-view defence;
- t <= the share holders, and min_participants >= t + 1 (one contributor plus t holders): otherwise
  a round could never be unmasked;
- a sparse graph needs an even k >= 2 with t <= k.

``tolerated_coalition`` states what a given (n, t) buys against collusion (see docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from crypto.secagg.errors import SecAggPolicyError

MAX_MEMBERS = 4096


@dataclass(frozen=True)
class SecAggPolicy:
    members: int
    threshold: int
    min_participants: int
    neighbours: int | None  # None: complete graph

    @property
    def holders(self) -> int:
        """How many other silos hold shares of each silo's secrets."""
        return self.members - 1 if self.neighbours is None else self.neighbours


def _int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SecAggPolicyError(field, f"must be an integer, got {value!r}")
    return value


def validate_policy(
    members: int, threshold: int, min_participants: int | None = None, neighbours: int | None = None
) -> SecAggPolicy:
    """A checked policy, or SecAggPolicyError naming the field and what to change."""
    members = _int("members", members)
    threshold = _int("threshold", threshold)
    if not 3 <= members <= MAX_MEMBERS:
        raise SecAggPolicyError(
            "members", f"secure aggregation needs 3 to {MAX_MEMBERS} participating silos, got {members}"
        )
    if neighbours is not None:
        neighbours = _int("neighbours", neighbours)
        if neighbours >= members - 1:
            neighbours = None  # every other member: the complete graph
        elif neighbours < 2 or neighbours % 2:
            raise SecAggPolicyError("neighbours", f"must be an even number >= 2 (or omitted for all), got {neighbours}")
    holders = members - 1 if neighbours is None else neighbours
    if 2 * threshold <= holders:
        raise SecAggPolicyError(
            "threshold",
            f"must exceed half of the {holders} share holders (at least {holders // 2 + 1}), got {threshold}",
        )
    if threshold > holders:
        raise SecAggPolicyError(
            "threshold", f"cannot exceed the {holders} share holders of each silo (k >= t), got {threshold}"
        )
    if min_participants is None:
        min_participants = threshold + 1
    min_participants = _int("min_participants", min_participants)
    if min_participants < 3 or min_participants < threshold + 1 or min_participants > members:
        raise SecAggPolicyError(
            "min_participants",
            f"must be at least 3 and at least threshold + 1 = {threshold + 1}, and at most {members}; "
            f"got {min_participants}",
        )
    return SecAggPolicy(members, threshold, min_participants, neighbours)


def tolerated_coalition(members: int, threshold: int) -> dict[str, int]:
    """Largest number of colluding silos (with the aggregator) that learns nothing of one honest silo's update.

    - ``passive``: the aggregator follows the protocol but pools what it sees with c silos. The
      coalition's own shares reconstruct a silo's secrets once c >= t, and n - 1 colluders learn the
      last silo from the aggregate: c <= min(t - 1, n - 2).
    - ``active``: the aggregator also lies about who dropped (shows different contributor sets to
      different silos). An honest silo commits to one contributor set per round (it signs and
      answers for that set only) and each set needs t shares, so the two contradictory sets that
      unmask silo X ("X contributed", "X dropped") need t - c honest answerers each, none of them X:
      2(t - c) + 1 <= n - c, i.e. the attack fails when c <= 2t - n.
    - ``dropouts``: a contributor's self seed needs t shares from the other survivors: n - 1 - t.
    -1 means "not even the aggregator alone". For a sparse graph these hold per neighbourhood, with
    the probabilistic bounds of Bell et al.
    """
    passive = min(threshold - 1, members - 2)
    active = max(-1, min(2 * threshold - members, passive))
    return {"passive": passive, "active": active, "dropouts": max(0, members - 1 - threshold)}
