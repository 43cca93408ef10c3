"""Where the core reads the time: injectable, so round deadlines can be tested without waiting."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    """The wall clock (``time.time``): what a running aggregator uses."""

    def now(self) -> float:
        return time.time()
