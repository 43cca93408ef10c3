"""Differential privacy for silo training: DP-SGD with a noise multiplier calibrated by a real accountant.

The unit of protection is the record. A job's privacy guarantee (epsilon, delta) covers every
local optimisation step of every round at a silo: the plan fixes the sampling rate (Poisson
sampling, q = 1 / batches per epoch) and the total number of steps before training starts, and the
noise multiplier is the one opacus' RDP accountant finds for exactly those. The epsilon actually
spent after each round is computed by the same accountant from the recorded history.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from protocol.jobspec import JobSpec

EPSILON_TOLERANCE = 0.01
# Renyi orders searched by the accountant: opacus' defaults stop at 63, where larger epsilons (few steps,
# little noise) have their optimum further out; a wider range gives a tighter (still valid) bound, so less
# noise for the same guarantee. Calibration and accounting always use the same orders.
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + list(range(64, 1025, 8))


@dataclass(frozen=True)
class DPPlan:
    epsilon: float
    delta: float
    max_grad_norm: float
    sample_rate: float
    steps_per_round: int
    total_steps: int
    noise_multiplier: float


def plan(spec: JobSpec, n_train: int) -> DPPlan:
    """The whole job's DP-SGD parameters at a silo with ``n_train`` training records."""
    assert spec.dp is not None
    batches = max(1, math.ceil(n_train / spec.batch_size))
    sample_rate = 1.0 / batches
    train_rounds = spec.rounds  # the statistics round (federated scaling) is refused with DP
    steps_per_round = spec.local_epochs * batches
    total = train_rounds * steps_per_round
    sigma = calibrate(spec.dp.epsilon, spec.dp.delta, sample_rate, total)
    return DPPlan(spec.dp.epsilon, spec.dp.delta, spec.dp.max_grad_norm, sample_rate, steps_per_round, total, sigma)


def calibrate(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Noise multiplier such that ``steps`` Poisson-sampled steps at ``sample_rate`` spend ``epsilon``."""
    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
            epsilon_tolerance=EPSILON_TOLERANCE,
            alphas=ALPHAS,
        )
    )


def epsilon_spent(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon spent by the steps recorded in ``history``: (noise multiplier, sample rate, steps)."""
    if not history:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(accountant.get_epsilon(delta, alphas=ALPHAS))


def clip_update(update: dict[str, np.ndarray], max_norm: float) -> OrderedDict[str, np.ndarray]:
    """Scale a whole update (all tensors together) down to L2 norm ``max_norm`` if it is larger.

    Bounds any one silo's influence on the aggregate; with DP-SGD it is in addition to per-sample
    clipping, not a replacement for it.
    """
    norm = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in update.values())))
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return OrderedDict((k, np.asarray(v) * factor) for k, v in update.items())
