"""Consortium and site policy files (TOML), validated field by field.

The consortium policy is held by the aggregator; the site policy by each silo and written by its
privacy officer. Both are plain files a person can read and sign off on.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protocol.names import factory_reference
from protocol.tomlconfig import ConfigError, load_toml, validate_model

# compact ranks with sum: the same CKKS parameters and key custody; quantization changes precision, not
# what the aggregator can see (docs/security.md).
HE_ORDER = {"none": 0, "sum": 1, "compact": 1, "vertical": 1}
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


HEProfileName = Literal["sum", "compact", "vertical", "none"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
JobType = Literal["horizontal", "vertical"]
ModelType = Literal["logreg", "mlp", "sklearn_sgd", "factory"]


def _default_profiles() -> list[HEProfileName]:
    return ["sum", "compact", "vertical"]


def _all_days() -> list[Day]:
    return ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _default_job_types() -> list[JobType]:
    return ["horizontal"]


def _default_models() -> list[ModelType]:
    return ["logreg", "mlp", "sklearn_sgd"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fingerprint(value: str) -> str:
    value = value.lower().replace(":", "")
    if not FINGERPRINT.match(value):
        raise ValueError("must be a SHA-256 certificate fingerprint (64 hex digits, colons allowed)")
    return value


class Member(Strict):
    name: str
    role: Literal["silo", "aggregator", "admin", "auditor"]
    cert_fingerprint: str = Field(description="SHA-256 of the member's certificate (pins it)")

    _fp = field_validator("cert_fingerprint")(classmethod(lambda cls, v: _fingerprint(v)))


class ConsortiumSecAgg(Strict):
    """What the consortium demands of secure aggregation (the job spec's ``[secagg]`` must meet it)."""

    required: bool = Field(False, description="every horizontal job must set secure_aggregation = true")
    min_threshold: int = Field(2, ge=2, description="jobs may not let fewer shares recover a silo's secrets")
    min_participants: int = Field(3, ge=3, description="jobs may not run a secure round with fewer silos")
    min_neighbours: int | None = Field(
        None, ge=2, description="sparse graphs must give each silo at least this many share holders; absent: any"
    )


class ConsortiumPolicy(Strict):
    kind: Literal["consortium"]
    consortium: str
    members: list[Member] = Field(min_length=1)
    min_silos_per_aggregate: int = Field(2, ge=2, description="no aggregate is released with fewer contributors")
    allowed_he_profiles: list[HEProfileName] = Field(default_factory=_default_profiles)
    max_rounds: int = Field(1000, ge=1)
    job_submitters: list[str] = Field(default_factory=list, description="admin names allowed to submit; empty: all")
    allowed_factories: list[str] = Field(
        default_factory=list,
        description="model factories ('package.module:function') jobs may name; empty: no factory jobs "
        "(each site still decides with its own allowed_factories)",
    )
    secure_aggregation: ConsortiumSecAgg = Field(default_factory=lambda: ConsortiumSecAgg())

    @field_validator("allowed_factories")
    @classmethod
    def _factories(cls, v: list[str]) -> list[str]:
        return [factory_reference(x) for x in v]

    @model_validator(mode="after")
    def _unique(self) -> ConsortiumPolicy:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError("members: a name is listed more than once")
        admins = {m.name for m in self.members if m.role == "admin"}
        unknown = [s for s in self.job_submitters if s not in admins]
        if unknown:
            raise ValueError(f"job_submitters: {', '.join(unknown)} are not admin members")
        return self

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


class SiteDP(Strict):
    required: bool = Field(False, description="refuse jobs that do not train with differential privacy")
    max_epsilon_per_job: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1e-2, description="largest delta a job may use")
    total_budget: float = Field(gt=0, description="epsilon budget of the dataset over all jobs")

    @model_validator(mode="after")
    def _order(self) -> SiteDP:
        if self.max_epsilon_per_job > self.total_budget:
            raise ValueError("max_epsilon_per_job exceeds total_budget")
        return self


class TimeWindow(Strict):
    days: list[Day] = Field(default_factory=_all_days)
    start: str = Field(description="HH:MM, UTC")
    end: str = Field(description="HH:MM, UTC; may be earlier than start to span midnight")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not HHMM.match(v):
            raise ValueError("use HH:MM (24-hour, UTC)")
        return v


class SitePolicy(Strict):
    kind: Literal["site"]
    site: str
    trusted_aggregators: list[str] = Field(min_length=1, description="aggregator certificate fingerprints")
    trusted_consortia: list[str] = Field(default_factory=list, description="consortium names; empty: any")
    allowed_job_types: list[JobType] = Field(default_factory=_default_job_types)
    allowed_models: list[ModelType] = Field(default_factory=_default_models)
    allowed_factories: list[str] = Field(
        default_factory=list,
        description="model factories ('package.module:function') this site will import and run for "
        'model.type = "factory" jobs (with "factory" in allowed_models); empty: none',
    )
    allowed_columns: list[str] | None = Field(None, description="if set, only these columns (patterns) may be used")
    denied_columns: list[str] = Field(default_factory=lambda: ["name", "*_name", "ssn", "mrn", "dob", "address"])
    min_participants: int = Field(2, ge=2)
    min_contributors: int = Field(
        2,
        ge=2,
        description="the fewest contributors, counted from the encrypted contributor tags (not the aggregator's "
        "claim), of an aggregate this silo applies; the job's min_silos applies too if larger",
    )
    min_he_profile: Literal["none", "sum"] = "sum"
    require_secure_aggregation: bool = Field(
        False,
        description="refuse horizontal jobs without secure aggregation: then not even the aggregator together "
        "with another silo can read this site's individual update",
    )
    min_secagg_threshold: int = Field(
        2, ge=2, description="refuse secure-aggregation jobs whose threshold t is lower (t resists coalitions)"
    )
    max_rounds: int = Field(1000, ge=1)
    max_local_epochs: int = Field(100, ge=1)
    dp: SiteDP | None = None
    time_windows: list[TimeWindow] = Field(default_factory=list, description="when jobs may run; empty: always")
    key_custodians: list[str] | None = Field(
        None,
        min_length=1,
        description="certificate fingerprints of the silos whose HE keys this node uses; "
        "absent: any current silo of the consortium",
    )

    @field_validator("trusted_aggregators")
    @classmethod
    def _fps(cls, v: list[str]) -> list[str]:
        return [_fingerprint(x) for x in v]

    @field_validator("key_custodians")
    @classmethod
    def _custodian_fps(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_fingerprint(x) for x in v]

    @field_validator("allowed_factories")
    @classmethod
    def _factories(cls, v: list[str]) -> list[str]:
        return [factory_reference(x) for x in v]


Policy = ConsortiumPolicy | SitePolicy


def load_policy(path: Path | str) -> Policy:
    """Load either kind, chosen by the file's ``kind`` field."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), [("(file)", f"cannot read: {exc.strerror or exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [("(syntax)", str(exc))]) from None
    kind = data.get("kind")
    if kind == "site":
        return validate_model(SitePolicy, data, str(path))
    if kind == "consortium":
        return validate_model(ConsortiumPolicy, data, str(path))
    raise ConfigError(str(path), [("kind", 'must be "site" or "consortium"')])


# The fingerprints deploy/examples/consortium-policy.toml ships with: they stand for "put the real one here".
EXAMPLE_FINGERPRINTS = frozenset(c * 64 for c in "1234")


def is_placeholder_fingerprint(fingerprint: str) -> bool:
    """All one digit, a short repeated pattern (``abab...``, ``0123456789abcdef`` x4) or an example's value.

    A real SHA-256 has none of these shapes; a policy that pins one pins nobody, and the member it names
    would be refused later with a far less helpful message.
    """
    fp = fingerprint.lower().replace(":", "")
    if fp in EXAMPLE_FINGERPRINTS:
        return True
    return any(len(fp) % period == 0 and fp == fp[:period] * (len(fp) // period) for period in range(1, 17))


def placeholder_problems(policy: ConsortiumPolicy | SitePolicy) -> list[str]:
    """One line per pin that is a placeholder fingerprint, saying how to get the real one."""
    if isinstance(policy, SitePolicy):
        return [
            f"trusted_aggregators: {fp[:16]}... is a placeholder, not a certificate's fingerprint; print the "
            "aggregator's with `cipherfed ca fingerprint aggregator.crt` (or read it in `cipherfed node doctor`)"
            for fp in policy.trusted_aggregators
            if is_placeholder_fingerprint(fp)
        ]
    return [
        f"member {m.name!r}: cert_fingerprint {m.cert_fingerprint[:16]}... is a placeholder, not a certificate's "
        f"fingerprint; print the real one with `cipherfed ca fingerprint {m.name}.crt` and paste it here"
        for m in policy.members
        if is_placeholder_fingerprint(m.cert_fingerprint)
    ]


def load_site_policy(path: Path | str) -> SitePolicy:
    return load_toml(SitePolicy, path)


def load_consortium_policy(path: Path | str) -> ConsortiumPolicy:
    return load_toml(ConsortiumPolicy, path)


def load_consortium_policy_for_use(path: Path | str) -> ConsortiumPolicy:
    """A consortium policy the aggregator may enforce: valid, and with no placeholder fingerprints."""
    policy = load_consortium_policy(path)
    problems = placeholder_problems(policy)
    if problems:
        raise ConfigError(str(path), [("members", p) for p in problems])
    return policy


class PolicyFile:
    """The consortium policy, re-read when its file changes (like the revocation list): no restart needed.

    An edit that does not validate (or pins a placeholder) is refused and the previous policy stays in
    force; ``on_change(ok, message)`` reports each reload either way so it can be audited.
    """

    def __init__(self, path: Path | str, on_change: Callable[[bool, str], None] | None = None) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self._lock = threading.Lock()
        self._policy = load_consortium_policy_for_use(self.path)  # a bad file at start is an error, not a warning
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def current(self) -> ConsortiumPolicy:
        stamp = self._file_stamp()
        with self._lock:
            if stamp is None or stamp == self._stamp:
                return self._policy
            self._stamp = stamp
            try:
                self._policy = load_consortium_policy_for_use(self.path)
            except ConfigError as exc:
                self._report(False, f"{exc}; the previous policy stays in force")
            else:
                self._report(True, f"{self.path} reloaded ({len(self._policy.members)} members)")
            return self._policy

    def _report(self, ok: bool, message: str) -> None:
        if self.on_change is not None:
            self.on_change(ok, message)
