"""What both parties of a vertical job share: credentials, the job's data split, and the model's maths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from audit.events import EventSink
from crypto.endorsement import TrustAnchors
from protocol.jobspec import JobSpec
from silo_node.client import AggregatorClient
from silo_node.data import LocalData
from silo_node.relay import Relay

TEST_FRACTION = 0.2


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-8] = 1.0
    return mean, std


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def train_positions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Aligned positions for training and for the joint test, from the job seed alone."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def batches(train: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, epoch])
    shuffled = rng.permutation(train)
    return [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]


@dataclass(frozen=True)
class PartyCredentials:
    """This node's certificate key (the active party signs the job's public key with it) and the
    anchors a passive party checks that signature against."""

    consortium: str
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    trust: TrustAnchors


@dataclass
class Party:
    job_id: str
    spec: JobSpec
    name: str
    data: LocalData
    relay: Relay
    client: AggregatorClient
    events: EventSink
    directory: Path
    credentials: PartyCredentials | None = None

    @property
    def vertical(self) -> Any:
        assert self.spec.vertical is not None
        return self.spec.vertical
