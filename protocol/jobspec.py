"""The job spec: what the coordinator submits and every party validates the same way.

A job spec is written by a coordinator who may be hostile and relayed by an aggregator that may
be hostile, so every field is bounded here, once, for every reader: every float is finite (no
inf/nan, which JSON would store as null) and within the limits below, every integer is bounded,
every name is a safe identifier (``protocol.names``), and lists have a maximum length. The limits
are generous for real cross-silo training and small enough that no spec can make a party
allocate, loop or wait without end.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from crypto.errors import ValueRangeError
from crypto.lanes import MAX_SILOS as MAX_COMPACT_SILOS
from crypto.lanes import max_bits_for, max_masked_bits_for
from crypto.quantize import MAX_BITS, MAX_BOUND, MIN_BITS, MIN_BOUND
from crypto.secagg.policy import SecAggPolicy
from protocol.names import MAX_NAME_CHARS, factory_reference, safe_name
from protocol.tomlconfig import ConfigError, parse_toml_text, validate_model

if TYPE_CHECKING:
    from crypto.compact import CompactParams

# Limits (documented in docs/run-consortium.md "Job spec limits").
MAX_PARTICIPANTS = 256
MAX_FEATURES = 10_000  # columns per job (and per vertical party)
MAX_HIDDEN_LAYERS = 16
MAX_HIDDEN_WIDTH = 65_536
MAX_MODEL_PARAMETERS = 20_000_000  # what a silo would allocate (and encrypt) for the model
MAX_CLASSES = 1000
MAX_BATCH_SIZE = 1 << 20
MAX_LR = 100.0
MAX_L2 = 10.0
MAX_ROUND_TIMEOUT_S = 86_400.0  # one day
MAX_ROUND_RETRIES = 100
MAX_EPSILON = 100.0
MAX_DELTA = 0.01
MAX_NORM = 1e6  # clipping norms
MAX_NOISE_STD = 1e3
MAX_MIN_ENTITIES = 1_000_000_000
MAX_SEED = (1 << 63) - 1
MAX_SPEC_CHARS = 1 << 20  # a spec with 256 parties x 10,000 columns is far smaller
KEY_FINGERPRINT_HEX_CHARS = 32  # crypto.keys.compute_fingerprint; a test keeps the two equal
KEY_FINGERPRINT = re.compile(rf"[0-9a-f]{{{KEY_FINGERPRINT_HEX_CHARS}}}")


def _named(what: str) -> AfterValidator:
    return AfterValidator(lambda v: safe_name(v, what))


PartyName = Annotated[str, Field(max_length=MAX_NAME_CHARS), _named("party name")]
ColumnName = Annotated[str, Field(max_length=MAX_NAME_CHARS), _named("column name")]
HiddenWidth = Annotated[int, Field(ge=1, le=MAX_HIDDEN_WIDTH)]


class Strict(BaseModel):
    # allow_inf_nan=False: inf and nan are refused at the edge (pydantic would accept them and JSON
    # would store them as null, which no reader can load back).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelSpec(Strict):
    type: Literal["logreg", "mlp", "sklearn_sgd", "factory"] = "logreg"
    hidden: list[HiddenWidth] = Field(
        default_factory=list, max_length=MAX_HIDDEN_LAYERS, description="hidden layer sizes for mlp"
    )
    factory: str | None = Field(
        None,
        description="module:function returning a torch nn.Module; a silo runs it only if its site policy "
        "lists it in allowed_factories",
    )
    num_classes: int = Field(2, ge=2, le=MAX_CLASSES)
    l2: float = Field(0.0, ge=0.0, le=MAX_L2)

    @field_validator("factory")
    @classmethod
    def _factory_reference(cls, v: str | None) -> str | None:
        return None if v is None else factory_reference(v)

    @model_validator(mode="after")
    def _factory_named(self) -> ModelSpec:
        if self.type == "factory" and not (self.factory and ":" in self.factory):
            raise ValueError("model.type = 'factory' needs factory = 'module:function'")
        if self.type == "mlp" and not self.hidden:
            raise ValueError("model.type = 'mlp' needs hidden = [sizes]")
        return self

    def parameter_count(self, n_features: int) -> int:
        """Parameters of the built-in model for ``n_features`` inputs (0 for a factory: unknown here)."""
        outputs = 1 if self.num_classes == 2 else self.num_classes
        if self.type == "factory":
            return 0
        widths = [n_features, *(self.hidden if self.type == "mlp" else []), outputs]
        return sum((a + 1) * b for a, b in itertools.pairwise(widths))


class DatasetSchema(Strict):
    features: list[ColumnName] = Field(
        default_factory=list, max_length=MAX_FEATURES, description="horizontal: the columns every silo uses"
    )
    label: ColumnName
    id: ColumnName | None = None
    scaling: Literal["federated", "local", "none"] = Field(
        "federated",
        description="federated: pooled means/variances from an encrypted statistics round (round 0); "
        "local: each silo standardizes with its own statistics (nothing leaves); none: raw features",
    )


class DPSpec(Strict):
    epsilon: float = Field(gt=0, le=MAX_EPSILON)
    delta: float = Field(1e-5, gt=0, le=MAX_DELTA)
    max_grad_norm: float = Field(1.0, gt=0, le=MAX_NORM)


class VerticalSpec(Strict):
    active: PartyName = Field(description="the party holding the labels (and some features)")
    passive: list[PartyName] = Field(
        min_length=1, max_length=MAX_PARTICIPANTS - 1, description="parties holding other features of the same entities"
    )
    features: dict[PartyName, Annotated[list[ColumnName], Field(max_length=MAX_FEATURES)]] = Field(
        max_length=MAX_PARTICIPANTS, description="each party's feature columns"
    )
    min_entities: int = Field(10, ge=1, le=MAX_MIN_ENTITIES, description="refuse to train on a smaller intersection")
    passive_noise_std: float = Field(
        0.0, ge=0, le=MAX_NOISE_STD, description="Gaussian noise passives add to their partial scores"
    )

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


class CompactSpec(Strict):
    """Quantization of a ``he_profile = "compact"`` job (crypto/compact.py), fixed for all its rounds.

    ``weight_cap`` is required: each silo scales its update by (its sample count) / weight_cap before
    quantizing, so a cap far above the silos' real counts costs precision (log2(cap / mean count) bits
    of the mean) and a cap below a silo's count caps that silo's influence (recorded in its audit log).
    Set it to the largest silo's training-record count, rounded up; no default could know that.
    """

    bits: int | None = Field(
        None,
        ge=MIN_BITS,
        le=MAX_BITS,
        description="bits per quantized value; default: the widest that keeps two lanes per real "
        "for max_silos (16 at 16 silos, 14 at 64, more for fewer silos)",
    )
    bound: float | None = Field(
        None, ge=MIN_BOUND, le=MAX_BOUND, description="update values are clipped to ±bound; default 1.0"
    )
    max_silos: int | None = Field(
        None, ge=1, le=MAX_COMPACT_SILOS, description="largest consortium the lanes hold; default: participants"
    )
    weight_cap: int = Field(
        ge=1, description="public cap on one silo's sample count: set it to the largest silo's training records"
    )
    rounding: Literal["stochastic"] = "stochastic"


class SecAggSpec(Strict):
    """Secure aggregation of a compact job (``secure_aggregation = true``): who must survive, who shares with whom.

    Each silo Shamir-shares its mask secrets t-of-(its share holders); the round releases only if at
    least ``min_participants`` silos advertised keys and the masks of every contributor and every
    dropped silo can be removed (t holders of each survived). A larger t resists larger coalitions of
    silos with the aggregator (``crypto.secagg.policy.tolerated_coalition``); a smaller t survives more
    dropouts. ``neighbours`` (even) makes the share graph sparse (SecAgg+); omitted: every other silo.
    """

    threshold: int | None = Field(
        None, ge=1, le=MAX_PARTICIPANTS, description="shares needed to recover a secret; default: a majority of holders"
    )
    min_participants: int | None = Field(
        None, ge=3, le=MAX_PARTICIPANTS, description="fewest silos with keys for a round to go on; default threshold+1"
    )
    neighbours: int | None = Field(None, ge=2, le=MAX_PARTICIPANTS, description="share holders per silo (even)")
    setup_timeout_s: float = Field(
        60.0, gt=0, le=MAX_ROUND_TIMEOUT_S, description="how long silos wait for keys and shares of a round"
    )
    unmask_timeout_s: float = Field(
        60.0, gt=0, le=MAX_ROUND_TIMEOUT_S, description="how long the aggregator waits for unmasking answers"
    )


COMPACT_NEEDS = (
    "[compact] weight_cap = N (N: the largest silo's number of training records) and key_fingerprint "
    "(a key created with `cipherfed keys create --profile compact`)"
)
KEYED_PROFILES = ("sum", "compact")  # horizontal profiles encrypted under a job key set named by key_fingerprint


class JobSpec(Strict):
    name: str
    partition: Literal["horizontal", "vertical"] = "horizontal"
    model: ModelSpec = Field(default_factory=lambda: ModelSpec())
    rounds: int = Field(ge=1, le=10_000)
    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=MAX_BATCH_SIZE)
    lr: float = Field(0.1, gt=0, le=MAX_LR)
    min_silos: int = Field(2, ge=1, le=MAX_PARTICIPANTS)
    round_timeout_s: float = Field(120.0, gt=0, le=MAX_ROUND_TIMEOUT_S, description="at most one day")
    max_round_retries: int = Field(2, ge=0, le=MAX_ROUND_RETRIES)
    he_profile: Literal["sum", "compact", "vertical", "none"] = "sum"
    key_fingerprint: str | None = None
    participants: list[PartyName] = Field(min_length=1, max_length=MAX_PARTICIPANTS)
    dataset: DatasetSchema
    seed: int = Field(0, ge=0, le=MAX_SEED)
    update_clip_norm: float | None = Field(None, gt=0, le=MAX_NORM)
    dp: DPSpec | None = None
    vertical: VerticalSpec | None = None
    compact: CompactSpec | None = Field(None, description='quantization of a he_profile = "compact" job')
    secure_aggregation: bool = Field(
        False, description="mask every update with pairwise and self masks (SecAgg) before encrypting it"
    )
    secagg: SecAggSpec | None = Field(None, description="threshold, participants and graph of secure aggregation")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return safe_name(v, "job name")

    @field_validator("key_fingerprint")
    @classmethod
    def _key_fingerprint(cls, v: str | None) -> str | None:
        if v is not None and not KEY_FINGERPRINT.fullmatch(v):
            raise ValueError(
                f"must be the {KEY_FINGERPRINT_HEX_CHARS} lowercase hex digits printed by `cipherfed keys create`"
            )
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
        self._check_compact()
        self._check_secure_aggregation()
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
            raise ValueError(
                "he_profile 'vertical' is for vertical jobs; horizontal jobs use 'sum', 'compact' or 'none'"
            )
        if self.partition == "horizontal":
            params = self.model.parameter_count(len(self.dataset.features))
            if params > MAX_MODEL_PARAMETERS:
                raise ValueError(
                    f"model: {params:,} parameters for {len(self.dataset.features)} features exceeds the limit of "
                    f"{MAX_MODEL_PARAMETERS:,}; use fewer or narrower hidden layers"
                )
        return self

    def _check_compact(self) -> None:
        """A compact job fixes a quantization whose lane sums can never carry; anything else is refused."""
        if self.he_profile != "compact":
            if self.compact is not None:
                raise ValueError('compact: the [compact] table is only for he_profile = "compact"')
            return
        if self.partition != "horizontal":
            raise ValueError("he_profile: 'compact' is for horizontal jobs; vertical jobs use 'vertical'")
        if self.compact is None or not self.key_fingerprint:
            raise ValueError(f"he_profile = 'compact' needs {COMPACT_NEEDS}")
        if self.dataset.scaling == "federated":
            raise ValueError(
                "dataset.scaling: the federated statistics round sends raw feature moments, which have no public "
                'bound to quantize them with; compact jobs use dataset.scaling = "local" or "none" (or he_profile '
                '= "sum")'
            )
        silos = self.compact.max_silos if self.compact.max_silos is not None else len(self.participants)
        if silos < len(self.participants):
            raise ValueError(
                f"compact.max_silos: {silos} is fewer than the {len(self.participants)} participants, whose honest "
                f"aggregate would then be refused; raise it or leave it out (default: the participants)"
            )
        try:
            compact_params(self)
        except ValueRangeError as exc:
            field = "compact.weight_cap" if "weight_cap" in str(exc) else "compact.bits / compact.max_silos"
            raise ValueError(f"{field}: {exc}") from None

    def _check_secure_aggregation(self) -> None:
        """Masks live in the compact profile's integer lanes; the policy must let masks both hide and cancel."""
        if not self.secure_aggregation:
            if self.secagg is not None:
                raise ValueError("secagg: the [secagg] table needs secure_aggregation = true")
            return
        if self.partition != "horizontal" or self.he_profile != "compact":
            raise ValueError(
                'secure_aggregation: needs a horizontal job with he_profile = "compact" (masks are added to its '
                'integer lanes); set he_profile = "compact" with a [compact] table'
            )
        policy = secagg_policy(self)  # raises ValueError naming the field
        if self.min_silos > policy.members:
            raise ValueError(f"min_silos ({self.min_silos}) exceeds the {policy.members} participants")

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


def compact_params(spec: JobSpec) -> CompactParams:
    """The quantization a compact job fixes, with defaults filled in (ValueRangeError if none can hold)."""
    from crypto.compact import DEFAULT_BOUND, CompactParams  # imported here: crypto.compact loads SEAL

    table = spec.compact
    if spec.he_profile != "compact" or table is None:
        raise ValueRangeError(f"job {spec.name} is not a compact job (he_profile {spec.he_profile!r})")
    silos = table.max_silos if table.max_silos is not None else len(spec.participants)
    if not 1 <= silos <= MAX_COMPACT_SILOS:
        raise ValueRangeError(
            f"compact profile: max_silos must be an integer in 1..{MAX_COMPACT_SILOS} (the lane headroom was measured "
            f"for sums of up to {MAX_COMPACT_SILOS} ciphertexts), got {silos}"
        )
    bound = float(table.bound) if table.bound is not None else DEFAULT_BOUND
    if spec.secure_aggregation:  # masked lanes are wider: the default bits are narrower
        bits = table.bits if table.bits is not None else max_masked_bits_for(silos)
        return CompactParams(bits, bound, silos, table.weight_cap, secure_aggregation=True)
    bits = table.bits if table.bits is not None else max_bits_for(silos)
    return CompactParams(bits, bound, silos, table.weight_cap)


def secagg_table(spec: JobSpec) -> SecAggSpec:
    """The job's ``[secagg]`` table, or its defaults when the spec has none (one place for them)."""
    return spec.secagg or SecAggSpec()


def secagg_policy(spec: JobSpec) -> SecAggPolicy:
    """The checked secure-aggregation policy of a job (ValueError naming the ``secagg.`` field otherwise)."""
    from crypto.secagg.errors import SecAggPolicyError
    from crypto.secagg.policy import validate_policy

    table = secagg_table(spec)
    members = len(spec.participants)
    if members < 3:
        raise ValueError(
            f"participants: secure aggregation needs at least 3 participating silos (with 2, each learns the "
            f"other's update from the sum), got {members}"
        )
    holders = members - 1 if table.neighbours is None or table.neighbours >= members - 1 else table.neighbours
    threshold = table.threshold if table.threshold is not None else holders // 2 + 1
    try:
        return validate_policy(members, threshold, table.min_participants, table.neighbours)
    except SecAggPolicyError as exc:
        raise ValueError(f"secagg.{exc.field}: {exc.reason}") from None


def parse_job_spec(text: str, source: str = "job spec") -> JobSpec:
    return parse_toml_text(JobSpec, text, source)


def job_spec_from_json(text: str, source: str = "job spec") -> JobSpec:
    """A spec that crossed a process boundary (stored row, task from the aggregator), validated again.

    Raises ``ConfigError`` (a ValueError) with field-level problems, never a pydantic error, so
    callers handle a hostile or corrupt spec like any other refused input.
    """
    import json

    if len(text) > MAX_SPEC_CHARS:
        raise ConfigError(source, [("(size)", f"{len(text)} characters exceeds the {MAX_SPEC_CHARS}-character limit")])
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(source, [("(json)", f"not valid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [("(top level)", "a job spec is a JSON object")])
    return validate_model(JobSpec, data, source)
