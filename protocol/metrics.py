"""The metrics a silo may report: declared model-quality measures, never counts.

What a silo reports is shown to the coordinator and auditors (GetJobStatus). Sample or entity
counts would tell them how much data each silo holds, which docs/security.md says nobody learns
(the sample weights travel only inside ciphertexts), so anything not on this list stays local.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

QUALITY_METRICS = frozenset({"accuracy", "loss", "auc", "test_accuracy", "test_auc"})


def reportable(metrics: Mapping[str, float]) -> dict[str, float]:
    """Only the declared quality metrics with finite values: what may leave a silo."""
    return {k: float(v) for k, v in metrics.items() if k in QUALITY_METRICS and math.isfinite(float(v))}
