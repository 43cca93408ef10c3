"""Vertical jobs at a silo: entity alignment by PSI, then logistic regression across parties.

The active party holds the labels and some features; each passive party holds other features of
the same entities. Every message goes through the aggregator's relay. Per mini-batch:

1. each passive sends Enc(X_k w_k) to the aggregator, which sums them for the active party;
2. the active party decrypts the sum U, computes z = X_A w_A + b + U, the exact sigmoid and the
   residual d = p - y, updates its own weights, and sends each passive Enc(d) tiled across that
   passive's feature columns;
3. the passive first probes that ciphertext: it multiplies it by secret random decoy columns,
   masks, and checks the masked totals the active party returns against what residuals with
   |d| <= 1 allow (``vertical_guard``); only then does it multiply the same ciphertext by its
   columns laid side by side (one plaintext multiplication, no rotations), add a fresh random
   mask per slot (as a fresh encryption), and send the result to the active party;
4. the active party decrypts, sums each column's segment and returns the masked sums; the passive
   removes its masks, refuses sums beyond what |d| <= 1 allows, and updates its weights.

Each party standardises its own columns with its own statistics; nobody learns another's. The
aligned entities are split into training and test positions by the job seed, so all parties agree
on the split without exchanging anything.

The code: ``relay.py`` (messages and their kinds), ``vertical_party.py`` (what both roles share),
``vertical_active.py`` and ``vertical_passive.py`` (one role each), ``vertical_guard.py`` (the
passive's checks of what the active party sends), and here the runner that drives either role.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crypto.keys import load_secret_key_set
from crypto.vertical_codec import VectorCodec
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import JobSpec
from protocol.vocabulary import AGGREGATOR_RECIPIENT, JobStatus
from silo_node.relay import Relay, VerticalError
from silo_node.vertical_active import ActiveParty
from silo_node.vertical_party import PartyCredentials, batches, sigmoid, train_positions
from silo_node.vertical_passive import PassiveParty

_log = logging.getLogger(__name__)

AGGREGATOR = AGGREGATOR_RECIPIENT  # kept under its old name for callers of this module

__all__ = [
    "AGGREGATOR",
    "ActiveParty",
    "PartyCredentials",
    "PassiveParty",
    "Relay",
    "VerticalError",
    "VerticalRunner",
    "batches",
    "load_active_for_prediction",
    "sigmoid",
    "train_positions",
]


class VerticalRunner:
    """Runs one party's side of a vertical job in its own thread, so the node keeps polling."""

    def __init__(self, party: ActiveParty | PassiveParty, on_error: Callable[[str], None]) -> None:
        self.party = party
        self.stopped = threading.Event()
        self.status: str = JobStatus.RUNNING
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name=f"vertical-{party.job_id}", daemon=True)

    def _run(self) -> None:
        try:
            self.party.run()
            self.status = JobStatus.COMPLETED
        except Exception as exc:  # any failure is reported, never fatal for the node
            self.status = JobStatus.FAILED
            if self.stopped.is_set():
                return  # the job already ended elsewhere (failed, aborted): nothing left to tell
            reason = str(exc) if isinstance(exc, VerticalError) else f"{type(exc).__name__}: {exc}"
            try:
                self._on_error(reason)
            except Exception as report_exc:  # e.g. the aggregator is unreachable: keep the node alive
                _log.warning(
                    "vertical job %s failed (%s) and the failure could not be reported: %s",
                    self.party.job_id,
                    reason,
                    report_exc,
                )

    def step(self, task: pb.Task) -> None:
        if not self._thread.is_alive() and self.status == JobStatus.RUNNING:
            self._thread.start()
        if task.job_status in (JobStatus.FAILED, JobStatus.ABORTED):
            self.stopped.set()


def load_active_for_prediction(directory: Path) -> tuple[JobSpec, VectorCodec, dict[str, Any]]:
    """What `job predict` needs at the active party: spec, secret codec, model and aligned ids."""
    spec = JobSpec.model_validate_json((directory / "job_spec.json").read_text())
    codec = VectorCodec(None)
    if spec.he_profile != "none":
        codec = VectorCodec(load_secret_key_set((directory / "vertical.key").read_bytes()).public.tenseal_context)
    with np.load(directory / "vertical_model.npz") as stored:
        model = {k: stored[k] for k in stored.files}
    model["aligned_ids"] = json.loads((directory / "aligned_ids.json").read_text())
    return spec, codec, model
