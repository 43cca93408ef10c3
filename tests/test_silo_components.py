"""The silo's data loading and model adapters, on real files and real torch / scikit-learn models."""

import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cipherfed.localconsortium import job_toml
from policies.dp import clip_update
from protocol.jobspec import parse_job_spec
from silo_node.data import DataError, load_columns
from silo_node.models import SklearnAdapter, TorchAdapter, evaluate, make_adapter


def spec(model='type = "logreg"', **kw):
    return parse_job_spec(job_toml("j", ["a", "b"], "f" * 32, ["x1", "x2"], model=model, **kw))


def data_xy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.int64)


def test_csv_and_parquet_sources_give_the_same_data(tmp_path):
    x, y = data_xy(20)
    csv = tmp_path / "d.csv"
    csv.write_text("pid,x1,x2,label\n" + "".join(f"p{i},{a},{b},{c}\n" for i, (a, b), c in zip(range(20), x, y)))
    pq.write_table(
        pa.table({"pid": [f"p{i}" for i in range(20)], "x1": x[:, 0], "x2": x[:, 1], "label": y}),
        tmp_path / "d.parquet",
    )
    a = load_columns(csv, ["x1", "x2"], "label", "pid")
    b = load_columns(tmp_path / "d.parquet", ["x1", "x2"], "label", "pid")
    assert np.allclose(a.features, b.features) and np.array_equal(a.labels, b.labels) and a.ids == b.ids


def test_data_errors_say_what_to_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_columns(tmp_path / "missing.csv", ["x"], "y")
    bad = tmp_path / "bad.csv"
    bad.write_text("x1,x2,label,city\n1,2,0,Paris\n3,four,1,Rome\n")
    with pytest.raises(DataError, match="no column.*'x9'.*it has x1, x2, label, city"):
        load_columns(bad, ["x1", "x9"], "label")
    with pytest.raises(DataError, match="'x2'.*non-numeric values \\(row 2: 'four'\\)"):
        load_columns(bad, ["x1", "x2"], "label")
    gap = tmp_path / "gap.csv"
    gap.write_text("x1,label\n1,0\n,1\n")
    with pytest.raises(DataError, match="missing value at row 2"):
        load_columns(gap, ["x1"], "label")


def test_torch_training_is_deterministic_given_seeds_and_learns():
    x, y = data_xy()
    results = []
    for _ in range(2):
        adapter = TorchAdapter(spec(local_epochs=5, lr=0.5), 2)
        adapter.train(x, y, seed=3)
        results.append(adapter.get_weights())
    assert all(np.array_equal(results[0][k], results[1][k]) for k in results[0])
    assert evaluate(adapter, x, y, 2)["accuracy"] > 0.9


def test_mlp_and_user_factory_models(tmp_path, monkeypatch):
    x, y = data_xy()
    mlp = make_adapter(spec('type = "mlp"\nhidden = [8, 4]', local_epochs=5, lr=0.5), 2)
    assert [tuple(v.shape) for v in mlp.get_weights().values()] == [(8, 2), (8,), (4, 8), (4,), (1, 4), (1,)]
    module = tmp_path / "my_models.py"
    module.write_text(
        textwrap.dedent("""
        import torch
        def tiny(n_features, num_classes):
            return torch.nn.Sequential(torch.nn.Linear(n_features, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
        def not_a_module(n_features, num_classes):
            return 42
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    allowed = ["my_models:tiny", "my_models:not_a_module"]  # what a site policy's allowed_factories would list
    adapter = make_adapter(spec('type = "factory"\nfactory = "my_models:tiny"', local_epochs=5, lr=0.5), 2, allowed)
    adapter.train(x, y, seed=1)
    assert evaluate(adapter, x, y, 2)["accuracy"] > 0.8
    with pytest.raises(TypeError, match="not a torch nn.Module"):
        make_adapter(spec('type = "factory"\nfactory = "my_models:not_a_module"'), 2, allowed)
    sys.modules.pop("my_models", None)


def test_sklearn_adapter_round_trips_weights_and_learns():
    x, y = data_xy()
    adapter = make_adapter(spec('type = "sklearn_sgd"', local_epochs=5, lr=0.05), 2)
    assert isinstance(adapter, SklearnAdapter)
    adapter.train(x, y, seed=0)
    weights = adapter.get_weights()
    assert list(weights) == ["coef", "intercept"] and weights["coef"].shape == (1, 2)
    assert evaluate(adapter, x, y, 2)["accuracy"] > 0.9
    other = make_adapter(spec('type = "sklearn_sgd"'), 2)
    other.set_weights(weights)  # the global model a silo applies is exactly what it gets
    assert np.allclose(other.predict_proba(x), adapter.predict_proba(x))


def test_update_clipping_bounds_the_whole_update():
    update = {"w": np.full((3, 4), 2.0), "b": np.array([1.0, -1.0])}
    clipped = clip_update(update, 1.0)
    norm = np.sqrt(sum((v**2).sum() for v in clipped.values()))
    assert norm == pytest.approx(1.0)
    assert np.allclose(clipped["w"] / update["w"], clipped["b"][0] / update["b"][0])  # direction kept
    small = clip_update({"w": np.array([0.1, 0.2])}, 1.0)
    assert np.array_equal(small["w"], [0.1, 0.2])
    assert torch is not None
