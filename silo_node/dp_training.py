"""Differentially private training of one job at one silo: never beyond what was reserved at accept.

The privacy ledger (``silo_node.privacy_ledger``) reserves epsilon for a job when the node accepts it;
every round is checked twice against that reservation (before training, with the planned steps, and
after, with the steps taken), and the spending is recorded in the ledger, which outlives the job's
directory: a lost or rolled-back directory cannot be used to spend the same budget twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from audit.events import EventSink
from crypto.compact import CompactEncryptor
from policies import dp
from protocol.jobspec import JobSpec
from silo_node.jobfiles import JobState
from silo_node.models import TorchAdapter
from silo_node.privacy_ledger import PrivacyLedger
from silo_node.refusal import JobRefused, RoundRefused

History = list[tuple[float, float, int]]


class PrivateTraining:
    """DP-SGD rounds of one job, accounted against its reservation."""

    def __init__(
        self,
        job_id: str,
        name: str,
        plan: dp.DPPlan,
        ledger: PrivacyLedger | None,
        dataset_key: str,
        events: EventSink,
    ) -> None:
        self.job_id, self.name, self.plan = job_id, name, plan
        self.ledger, self.dataset_key, self.events = ledger, dataset_key, events

    @staticmethod
    def history(state: JobState) -> History:
        return [(float(s), float(q), int(n)) for s, q, n in state.dp_history]

    def reserved_epsilon(self) -> float:
        """The epsilon reserved for this job when it was accepted (the ledger's, not what a spec says now)."""
        reserved = self.ledger.reservation(self.dataset_key, self.job_id) if self.ledger is not None else None
        return self.plan.epsilon if reserved is None else min(reserved, self.plan.epsilon)

    def check_history_matches_ledger(self, state: JobState) -> None:
        """The ledger outlives a job directory: if it shows more spent than the local history accounts for
        (the directory was lost or rolled back), continuing would count that spending twice."""
        if self.ledger is None:
            return
        recorded = self.ledger.spent(self.dataset_key, self.job_id)
        local = dp.epsilon_spent(self.history(state), self.plan.delta)
        if recorded > local + 1e-6:
            raise RoundRefused(
                [
                    f"the privacy ledger shows epsilon {recorded:.4f} spent on job {self.job_id} but this job's "
                    f"local history accounts for {local:.4f}; the job cannot continue without double spending"
                ]
            )

    def check_budget(self, round_index: int, history: History, when: str) -> float:
        """Epsilon after ``history``; refuse (audited) if it exceeds the job's reservation."""
        epsilon = dp.epsilon_spent(history, self.plan.delta)
        reserved = self.reserved_epsilon()
        if epsilon > reserved + 1e-9:
            reason = (
                f"round {round_index} would bring job {self.job_id} to epsilon {epsilon:.4f} {when}, beyond the "
                f"{reserved:.4f} reserved for it at accept; this silo stops training for the job"
            )
            self.events.record(
                "dp_budget_refused", self.name, job=self.job_id, round=round_index, epsilon=epsilon, reserved=reserved
            )
            raise RoundRefused([reason])
        return epsilon

    def train(
        self,
        model: TorchAdapter,
        x: np.ndarray,
        y: np.ndarray,
        seed: int,
        round_index: int,
        state: JobState,
        save: Callable[[], None],
    ) -> None:
        """One round of DP-SGD: checked as planned, trained, recorded, checked as trained."""
        plan = self.plan
        planned = (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
        self.check_budget(round_index, [*self.history(state), planned], "(planned)")
        steps, sample_rate = model.train_private(x, y, seed, plan.noise_multiplier, plan.max_grad_norm)
        state.dp_history.append([plan.noise_multiplier, sample_rate, steps])
        save()
        spent = dp.epsilon_spent(self.history(state), plan.delta)
        if self.ledger is not None:
            self.ledger.record_spend(self.dataset_key, self.job_id, round_index, spent)
        self.check_budget(round_index, self.history(state), "(as trained)")  # nothing over budget is released

    def details(self, state: JobState) -> dict[str, Any]:
        """The privacy facts of the update_sent audit record."""
        return {
            "dp": True,
            "dp_epsilon": round(dp.epsilon_spent(self.history(state), self.plan.delta), 4),
            "dp_delta": self.plan.delta,
            "noise_multiplier": round(self.plan.noise_multiplier, 4),
            "max_grad_norm": self.plan.max_grad_norm,
            "dp_target_epsilon": self.plan.epsilon,
        }


def calibrate(spec: JobSpec, n_train: int) -> dp.DPPlan | None:
    """The job's DP-SGD noise, calibrated before any budget is reserved: an epsilon the accountant cannot
    reach on this dataset (opacus raises ValueError) is a refusal with what to do, not a crash."""
    if spec.dp is None:
        return None
    try:
        return dp.plan(spec, n_train)
    except ValueError as exc:
        raise JobRefused(
            [
                f"dp.epsilon: {spec.dp.epsilon:g} is too small for this dataset ({n_train} training rows, "
                f"{spec.rounds} rounds x {spec.local_epochs} epochs at batch_size {spec.batch_size}): "
                f"no noise level reaches it ({exc}); resubmit with a larger epsilon, fewer rounds or epochs, "
                "or a smaller batch_size"[:2000]
            ]
        ) from None


def reserve(ledger: PrivacyLedger, dataset_key: str, job_id: str, spec: JobSpec) -> float:
    """Reserve the job's epsilon on this dataset; returns the dataset's total reservation.

    The ledger must never show more epsilon spent on a job than was reserved for it (a restored or
    copied ledger could): that refuses the job.
    """
    assert spec.dp is not None
    ledger.reserve(dataset_key, job_id, spec.dp.epsilon, spec.dp.delta)
    reserved = ledger.reservation(dataset_key, job_id) or 0.0
    spent = ledger.spent(dataset_key, job_id)
    if spent > reserved + 1e-9:
        raise JobRefused([f"privacy ledger: job {job_id} spent epsilon {spent:.4f}, beyond its {reserved:.4f}"])
    return ledger.reserved(dataset_key)


def privacy_details(
    encryptor: object, note: dict[str, Any] | None, private: PrivateTraining | None, state: JobState
) -> dict[str, Any]:
    """What the compliance officer needs about privacy in an ``update_sent`` record: DP spending and, for
    profile compact, the quantization and what it changed in this round's update (clips are never silent)."""
    details: dict[str, Any] = {}
    if isinstance(encryptor, CompactEncryptor):
        params = encryptor.params
        details = {"bits": params.bits, "bound": params.bound, "weight_cap": params.weight_cap}
        if note is None:  # a re-send of bytes prepared before a restart: the counts were audited then
            note = {"clipped_values": None, "weight_capped": None, "resent_from_cache": True}
        details.update(note)
    if private is None:
        return {"dp": False, **details}
    return {**details, **private.details(state)}
