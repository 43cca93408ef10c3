"""Who has talked to the aggregator, and when: the members page of the console and the
"seconds since last poll" metric read this.

Only identities that passed certificate verification are remembered, so the table is bounded
by the certificates the consortium CA issued; nothing a caller sends can add a row.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from crypto.pki import Identity

SERVICE_PREFIX = "/cipherfed.v1.Consortium/"


@dataclass
class Seen:
    identity: Identity
    last_seen: float = 0.0
    last_method: str = ""
    last_poll: float = 0.0


class Presence:
    """Last authenticated call per certificate fingerprint (thread-safe; called on every RPC)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, Seen] = {}

    def saw(self, identity: Identity, method: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        short = method.removeprefix(SERVICE_PREFIX)
        with self._lock:
            entry = self._seen.get(identity.fingerprint)
            if entry is None:
                entry = self._seen[identity.fingerprint] = Seen(identity)
            entry.last_seen, entry.last_method = now, short
            if short == "Poll":
                entry.last_poll = now

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return [Seen(s.identity, s.last_seen, s.last_method, s.last_poll) for s in self._seen.values()]

    def last_polls(self) -> dict[str, float]:
        """Member name -> time of its latest poll (over all of its certificates)."""
        polls: dict[str, float] = {}
        for s in self.snapshot():
            if s.last_poll:
                polls[s.identity.name] = max(polls.get(s.identity.name, 0.0), s.last_poll)
        return polls
