"""Why a node leaves a job: refused when offered (``JobRefused``) or during a round (``RoundRefused``).

Either way the node declines the job with the reasons, which reach the aggregator and its audit log.
"""

from __future__ import annotations


class RoundRefused(Exception):
    """What the aggregator asked for breaks the job spec or this silo's limits: the silo leaves the job."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class JobRefused(Exception):
    """This node will not (or cannot) take part in a job; the reasons go to the aggregator."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons
