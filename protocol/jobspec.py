"""The job spec: what the coordinator submits and every party validates the same way."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.tomlconfig import parse_toml_text

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Strict):
    type: Literal["logreg", "mlp", "sklearn_sgd", "factory"] = "logreg"
    hidden: list[int] = Field(default_factory=list, description="hidden layer sizes for mlp")
    factory: str | None = Field(None, description="module:function returning a torch nn.Module")
    num_classes: int = Field(2, ge=2)
    l2: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _factory_named(self) -> ModelSpec:
        if self.type == "factory" and not (self.factory and ":" in self.factory):
            raise ValueError("model.type = 'factory' needs factory = 'module:function'")
        if self.type == "mlp" and not self.hidden:
            raise ValueError("model.type = 'mlp' needs hidden = [sizes]")
        if any(h < 1 for h in self.hidden):
            raise ValueError("hidden sizes must be positive")
        return self


class DatasetSchema(Strict):
    features: list[str] = Field(default_factory=list, description="horizontal: the columns every silo uses")
    label: str
    id: str | None = None
    scaling: Literal["federated", "local", "none"] = Field(
        "federated",
        description="federated: pooled means/variances from an encrypted statistics round (round 0); "
        "local: each silo standardizes with its own statistics (nothing leaves); none: raw features",
    )


class DPSpec(Strict):
    epsilon: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)


class VerticalSpec(Strict):
    active: str = Field(description="the party holding the labels (and some features)")
    passive: list[str] = Field(min_length=1, description="parties holding other features of the same entities")
    features: dict[str, list[str]] = Field(description="each party's feature columns")
    min_entities: int = Field(10, ge=1, description="refuse to train on a smaller intersection")
    passive_noise_std: float = Field(0.0, ge=0, description="Gaussian noise passives add to their partial scores")

    @model_validator(mode="after")
    def _parties(self) -> VerticalSpec:
        parties = [self.active, *self.passive]
        if len(set(parties)) != len(parties):
            raise ValueError("a party is listed twice (active and passive must differ)")
        if set(self.features) != set(parties):
            raise ValueError(f"features must list the columns of exactly these parties: {', '.join(parties)}")
        if any(not cols for cols in self.features.values()):
            raise ValueError("every party needs at least one feature column")
        return self


class JobSpec(Strict):
    name: str
    partition: Literal["horizontal", "vertical"] = "horizontal"
    model: ModelSpec = Field(default_factory=lambda: ModelSpec())
    rounds: int = Field(ge=1, le=10_000)
    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(0.1, gt=0)
    min_silos: int = Field(2, ge=1)
    round_timeout_s: float = Field(120.0, gt=0)
    max_round_retries: int = Field(2, ge=0)
    he_profile: Literal["sum", "vertical", "none"] = "sum"
    key_fingerprint: str | None = None
    participants: list[str] = Field(min_length=1)
    dataset: DatasetSchema
    seed: int = 0
    update_clip_norm: float | None = Field(None, gt=0)
    dp: DPSpec | None = None
    vertical: VerticalSpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_PATTERN.match(v):
            raise ValueError("use 1-64 letters, digits, '.', '_' or '-'")
        return v

    @field_validator("participants")
    @classmethod
    def _participants(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("participants are listed more than once")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.min_silos > len(self.participants):
            raise ValueError(f"min_silos ({self.min_silos}) exceeds the {len(self.participants)} participants")
        if self.he_profile == "sum" and not self.key_fingerprint:
            raise ValueError("he_profile = 'sum' needs key_fingerprint (printed by `cipherfed keys create`)")
        if self.partition == "vertical":
            self._check_vertical()
        elif not self.dataset.features:
            raise ValueError("dataset.features: a horizontal job needs at least one feature column")
        if self.dp is not None and self.dataset.scaling == "federated":
            raise ValueError(
                "dp: the federated scaling round releases pooled feature statistics that no DP accountant covers; "
                'use dataset.scaling = "local" or "none" with differential privacy'
            )
        if self.dp is not None and self.model.type == "sklearn_sgd":
            raise ValueError("dp: DP-SGD trains torch models; use model.type logreg, mlp or factory")
        if self.partition == "horizontal" and self.he_profile == "vertical":
            raise ValueError("he_profile 'vertical' is for vertical jobs; horizontal jobs use 'sum' or 'none'")
        return self

    def _check_vertical(self) -> None:
        v = self.vertical
        if v is None:
            raise ValueError("partition = 'vertical' needs a [vertical] table (active, passive, features)")
        if set(self.participants) != {v.active, *v.passive}:
            raise ValueError("participants must be exactly vertical.active and vertical.passive")
        if self.he_profile not in ("vertical", "none"):
            raise ValueError("vertical jobs use he_profile 'vertical' (or 'none' for a plaintext comparison)")
        if self.model.type != "logreg" or self.model.num_classes != 2:
            raise ValueError("vertical jobs train binary logistic regression (model.type = 'logreg')")
        if not self.dataset.id:
            raise ValueError("dataset.id: vertical jobs align entities by an id column")
        if self.dp is not None:
            raise ValueError("dp: differential privacy is not available for vertical jobs yet")

    def party_columns(self, party: str) -> list[str]:
        """The columns a party reads for this job (features, plus label and id where they apply)."""
        if self.partition == "vertical" and self.vertical is not None:
            columns = list(self.vertical.features.get(party, []))
            if party == self.vertical.active:
                columns.append(self.dataset.label)
            return columns + ([self.dataset.id] if self.dataset.id else [])
        return [*self.dataset.features, self.dataset.label] + ([self.dataset.id] if self.dataset.id else [])

    @property
    def stats_round(self) -> bool:
        """Round 0 is an encrypted feature-statistics round when scaling is federated."""
        return self.partition == "horizontal" and self.dataset.scaling == "federated"

    @property
    def total_rounds(self) -> int:
        return self.rounds + (1 if self.stats_round else 0)

    @property
    def rounds_description(self) -> str:
        """The one wording every command uses: ``10 training rounds + 1 statistics round (11 in all)``."""
        training = f"{self.rounds} training round{'s' if self.rounds != 1 else ''}"
        if not self.stats_round:
            return training
        return f"{training} + 1 statistics round ({self.total_rounds} in all)"


def parse_job_spec(text: str, source: str = "job spec") -> JobSpec:
    return parse_toml_text(JobSpec, text, source)


def job_spec_from_json(text: str) -> JobSpec:
    return JobSpec.model_validate_json(text)
