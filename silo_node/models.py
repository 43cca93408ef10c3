"""Local models behind one small interface: weights as named arrays, train, predict.

Federated averaging only needs the weights as an ordered mapping of named float arrays; the
adapters make torch modules (built-in ``logreg`` and ``mlp`` or a user factory) and
scikit-learn linear models look the same to the rest of the node.
"""

from __future__ import annotations

import copy
import importlib
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from torch import nn

from protocol.jobspec import JobSpec


class ModelAdapter(Protocol):
    def get_weights(self) -> OrderedDict[str, np.ndarray]: ...
    def set_weights(self, weights: dict[str, np.ndarray]) -> None: ...
    def train(self, x: np.ndarray, y: np.ndarray, seed: int) -> None: ...
    def predict_proba(self, x: np.ndarray) -> np.ndarray: ...


class FactoryNotAllowed(PermissionError):
    """A job named a model factory this site's policy does not list: nothing was imported."""


def _load_factory(reference: str, allowed_factories: Collection[str]) -> Any:
    """Import ``module:function`` only if the site policy lists exactly this reference.

    The check sits at the import itself, so no caller can reach ``importlib`` with a job-supplied
    name that the site's privacy officer has not named.
    """
    if reference not in allowed_factories:
        raise FactoryNotAllowed(
            f"model factory {reference!r} is not in this site's allowed_factories "
            f"({', '.join(sorted(allowed_factories)) or 'none listed'}); nothing was imported"
        )
    module_name, _, function = reference.partition(":")
    return getattr(importlib.import_module(module_name), function)


def _outputs(spec: JobSpec) -> int:
    return 1 if spec.model.num_classes == 2 else spec.model.num_classes


def build_torch_module(spec: JobSpec, n_features: int, allowed_factories: Collection[str] = ()) -> nn.Module:
    torch.manual_seed(spec.seed)  # every silo starts from the same initial global model
    out = _outputs(spec)
    if spec.model.type == "logreg":
        return nn.Linear(n_features, out)
    if spec.model.type == "mlp":
        layers: list[nn.Module] = []
        width = n_features
        for hidden in spec.model.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, out))
        return nn.Sequential(*layers)
    if spec.model.type == "factory":
        assert spec.model.factory is not None
        factory = _load_factory(spec.model.factory, allowed_factories)
        module = factory(n_features=n_features, num_classes=spec.model.num_classes)
        if not isinstance(module, nn.Module):
            raise TypeError(f"{spec.model.factory} returned {type(module).__name__}, not a torch nn.Module")
        return module
    raise ValueError(f"model type {spec.model.type!r} is not a torch model")


class TorchAdapter:
    def __init__(self, spec: JobSpec, n_features: int, allowed_factories: Collection[str] = ()) -> None:
        self.spec = spec
        self.module = build_torch_module(spec, n_features, allowed_factories).double()
        self.binary = spec.model.num_classes == 2
        self.last_noise_multiplier: float | None = None

    def get_weights(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in self.module.state_dict().items())

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.module.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in weights.items()})

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), target.double())
        return nn.functional.cross_entropy(logits, target)

    def train(self, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        optimizer = torch.optim.SGD(self.module.parameters(), lr=self.spec.lr, weight_decay=self.spec.model.l2)
        self.module.train()
        for _ in range(self.spec.local_epochs):
            order = torch.randperm(xt.shape[0], generator=generator)
            for start in range(0, xt.shape[0], self.spec.batch_size):
                batch = order[start : start + self.spec.batch_size]
                optimizer.zero_grad()
                self._loss(self.module(xt[batch]), yt[batch]).backward()
                optimizer.step()

    def train_private(
        self, x: np.ndarray, y: np.ndarray, seed: int, noise_multiplier: float, max_grad_norm: float
    ) -> tuple[int, float]:
        """DP-SGD with opacus: per-sample clipping, Gaussian noise, Poisson sampling.

        Trains a fresh copy of the module (opacus hooks never accumulate across rounds) and copies
        the weights back. Returns (optimizer steps taken, sampling rate) for the accountant.
        """
        import warnings

        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(seed)
        module = copy.deepcopy(self.module)
        module.train()  # opacus requires training mode; the copy inherits eval mode from evaluation
        optimizer = torch.optim.SGD(module.parameters(), lr=self.spec.lr, weight_decay=self.spec.model.l2)
        loader = DataLoader(
            TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
            batch_size=self.spec.batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # opacus warns about secure_mode; see docs/security.md
            engine = PrivacyEngine(accountant="rdp")
            private, private_optimizer, private_loader = engine.make_private(
                module=module,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=True,
            )
        self.last_noise_multiplier = float(private_optimizer.noise_multiplier)
        private.train()
        steps = 0
        with warnings.catch_warnings():  # a harmless torch notice about opacus' per-sample gradient hooks
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for _ in range(self.spec.local_epochs):
                for xb, yb in private_loader:
                    private_optimizer.zero_grad()
                    if len(xb):
                        self._loss(private(xb), yb).backward()
                    private_optimizer.step()
                    steps += 1
        self.module.load_state_dict(module.state_dict())
        return steps, float(private_loader.sample_rate)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            logits = self.module(torch.from_numpy(x))
        if self.binary:
            p = torch.sigmoid(logits.squeeze(-1)).numpy()
            return np.column_stack([1 - p, p])
        return torch.softmax(logits, dim=-1).numpy()


class SklearnAdapter:
    """scikit-learn ``SGDClassifier`` (logistic loss): coef_ and intercept_ are the weights."""

    def __init__(self, spec: JobSpec, n_features: int) -> None:
        self.spec = spec
        rows = 1 if spec.model.num_classes == 2 else spec.model.num_classes
        self.classes = np.arange(spec.model.num_classes)
        self.coef = np.zeros((rows, n_features))
        self.intercept = np.zeros(rows)

    def get_weights(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict([("coef", self.coef.copy()), ("intercept", self.intercept.copy())])

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.coef = np.asarray(weights["coef"], dtype=np.float64).copy()
        self.intercept = np.asarray(weights["intercept"], dtype=np.float64).copy()

    def train(self, x: np.ndarray, y: np.ndarray, seed: int) -> None:
        model = SGDClassifier(
            loss="log_loss",
            learning_rate="constant",
            eta0=self.spec.lr,
            alpha=self.spec.model.l2,
            max_iter=self.spec.local_epochs,
            tol=None,
            random_state=seed % (2**31),
        )
        present = np.unique(y)
        if len(present) < 2:  # one class locally: SGD cannot fit; contribute no change
            return
        model.fit(
            x,
            y,
            coef_init=self.coef if len(present) == len(self.classes) else None,
            intercept_init=self.intercept if len(present) == len(self.classes) else None,
        )
        if len(present) == len(self.classes):
            self.coef, self.intercept = model.coef_.copy(), model.intercept_.copy()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.coef.T + self.intercept
        if self.coef.shape[0] == 1:
            p = 1 / (1 + np.exp(-z[:, 0]))
            return np.column_stack([1 - p, p])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def make_adapter(
    spec: JobSpec, n_features: int, allowed_factories: Collection[str] = ()
) -> TorchAdapter | SklearnAdapter:
    """The job's model; a factory model only if ``allowed_factories`` (the site policy's) names it."""
    if spec.model.type == "sklearn_sgd":
        return SklearnAdapter(spec, n_features)
    return TorchAdapter(spec, n_features, allowed_factories)


def evaluate(adapter: Any, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, AUC (one-vs-rest macro for several classes) and log loss."""
    if x.shape[0] == 0:
        return {}
    proba = np.clip(adapter.predict_proba(x), 1e-12, 1 - 1e-12)
    proba = proba / proba.sum(axis=1, keepdims=True)
    labels = np.arange(num_classes)
    metrics = {
        "accuracy": float(accuracy_score(y, proba.argmax(axis=1))),
        "loss": float(log_loss(y, proba, labels=labels)),
    }
    try:
        if num_classes == 2:
            metrics["auc"] = float(roc_auc_score(y, proba[:, 1]))
        else:
            metrics["auc"] = float(roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    except ValueError:  # one class only in this split
        pass
    return metrics
