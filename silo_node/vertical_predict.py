"""``cipherfed job predict``: joint scores for aligned entities, at the active party.

Every party contributes its partial score the way it does in training: passive parties send
encrypted partial scores for the requested aligned positions to the aggregator, which sums them;
the active party decrypts the sum, adds its own part and the intercept. Passive parties learn only
which aligned positions were scored, never the ids or the scores.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np

from crypto.psi import normalize_id
from protocol.vocabulary import AGGREGATOR_RECIPIENT, RelayKind
from silo_node.client import AggregatorClient
from silo_node.config import NodeConfig
from silo_node.data import load_columns
from silo_node.relay import PartyKind, Relay, VerticalError
from silo_node.vertical import load_active_for_prediction
from silo_node.vertical_party import sigmoid


def read_ids(path: Path) -> list[str]:
    """One id per line (a header line named like an id column is skipped)."""
    lines = [line.split(",")[0].strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and lines[0].lower() in ("id", "patient_id", "entity_id"):
        lines = lines[1:]
    return lines


def predict(config: NodeConfig, job_id: str, ids: list[str], timeout_s: float = 120.0) -> list[tuple[str, float]]:
    directory = config.state_dir / "jobs" / job_id
    if not (directory / "vertical_model.npz").exists():
        raise VerticalError(f"{directory} holds no trained vertical model for job {job_id} (is this the active party?)")
    spec, codec, model = load_active_for_prediction(directory)
    assert spec.vertical is not None and spec.dataset.id is not None
    position = {normalize_id(i): p for p, i in enumerate(model["aligned_ids"])}
    unknown = [i for i in ids if normalize_id(i) not in position]
    if unknown:
        raise VerticalError(
            f"{len(unknown)} id(s) are not among the job's aligned entities "
            f"(for example {unknown[0]!r}); only aligned entities can be scored jointly"
        )
    positions = np.asarray([position[normalize_id(i)] for i in ids], dtype=np.int64)
    data = load_columns(
        config.data.path, spec.vertical.features[config.name], None, spec.dataset.id, config.data.format
    )
    assert data.ids is not None
    row_of = {normalize_id(i): r for r, i in enumerate(data.ids)}
    x = data.features[[row_of[normalize_id(i)] for i in ids]]
    x = (x - model["mean"]) / model["std"]
    client = AggregatorClient(config.aggregator, config.tls.files(), config.server_name)
    try:
        relay = Relay(client, job_id, lambda: False, timeout_s)
        seq = secrets.randbits(31) + (1 << 31)  # far from training steps: never collides with them
        request = ('{"positions": [' + ",".join(str(int(p)) for p in positions) + "]}").encode()
        for passive in spec.vertical.passive:
            relay.send_blob(passive, PartyKind.PREDICT_REQUEST, seq, request)
        partial = codec.decrypt(relay.receive(AGGREGATOR_RECIPIENT, RelayKind.SUMMED_PREDICTIONS, seq)[1])[: len(ids)]
    finally:
        client.close()
    scores = sigmoid(x @ model["weights"] + float(model["bias"]) + partial)
    return list(zip(ids, scores.tolist(), strict=True))
