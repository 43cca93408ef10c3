"""Fault injection for demos and tests: a node that crashes at a chosen point of a round.

``CIPHERFED_FAULT_STOP_AFTER_AGREEMENT=ROUND`` in a node's environment stops its process right after
secure-aggregation mask agreement and before its upload in that round, as a site that loses power
would (``cipherfed demo --drop-silo``). The event is audited before the process exits. Nothing else
reads the variable; production nodes never set it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from audit.events import EventSink

FAULT_STOP_AFTER_AGREEMENT = "CIPHERFED_FAULT_STOP_AFTER_AGREEMENT"
FAULT_EXIT_CODE = 75


def stop_after_agreement_hook(name: str, events: EventSink) -> Callable[[str, int], None]:
    """The ``after_agreement`` callback of a node: exits in the configured round, if any."""
    wanted = os.environ.get(FAULT_STOP_AFTER_AGREEMENT, "")

    def after_agreement(job_id: str, round_index: int) -> None:
        if wanted.isdigit() and int(wanted) == round_index:
            events.record("fault_injected", name, job=job_id, round=round_index, fault="stop_after_agreement")
            print(f"{name}: stopping after mask agreement in round {round_index} (fault injection)", flush=True)
            os._exit(FAULT_EXIT_CODE)

    return after_agreement
