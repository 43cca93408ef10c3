"""What the round core, the vertical module and the job facade share: one lock with a change
counter (long polls wait on it), and the parsed job specs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator

from aggregator.core.clock import Clock
from aggregator.core.errors import NotFound, PreconditionFailed, ResourceExhausted
from aggregator.core.store_contract import JobStore
from aggregator.core.views import RelayOffer
from policies.schema import ConsortiumPolicy, PolicyFile
from protocol.jobspec import JobSpec, job_spec_from_json
from protocol.tomlconfig import ConfigError


class ChangeFeed:
    """The core's one lock, and a version that moves on every change a poller could see."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.version = 1

    def bump(self) -> None:
        with self.lock:
            self.version += 1
            self.changed.notify_all()

    def wait(self, known_version: int, timeout_s: float) -> int:
        """Block until the version moves past ``known_version`` or the timeout; returns the version."""
        with self.changed:
            if known_version == self.version:
                self.changed.wait(timeout_s)
            return self.version


def bounded_send(offers: Iterable[RelayOffer], max_messages: int, max_bytes: int) -> Iterator[RelayOffer]:
    """A Send's messages, refusing the one that would take it past ``max_messages`` or ``max_bytes`` of
    payload before it is handed on: the relay's one bound on a Send, whatever the job."""
    total = 0
    for count, m in enumerate(offers):
        if count >= max_messages or total + len(m.payload) > max_bytes:
            raise ResourceExhausted(
                f"one Send carries at most {max_messages} messages and {max_bytes} "
                "payload bytes; split the payload over several Sends"
            )
        total += len(m.payload)
        yield m


def wait_for_mail(
    take: Callable[[], list[bytes]],
    feed: ChangeFeed,
    clock: Clock,
    wait_s: float,
    connected: Callable[[], bool],
) -> list[bytes]:
    """``take()`` until it yields messages, the wait is over or the caller went away; ``feed`` wakes it.

    The relay's one long-poll: a Receive holds no lock while it waits and returns as soon as its
    messages are posted (whoever posts them bumps ``feed``).
    """
    deadline = clock.now() + wait_s
    while True:
        version = feed.version
        taken = take()
        if taken or clock.now() >= deadline or not connected():
            return taken
        feed.wait(version, max(0.0, deadline - clock.now()))


class PolicyInForce:
    """The consortium policy the core decides by, read afresh at each decision.

    A ``PolicyFile`` is re-read when its file changes (a bad edit keeps the previous policy), so the
    submit rules, the upload rules and the release threshold follow the file without a restart.
    Callers read ``current()`` once per decision, so one decision never mixes two versions.
    """

    def __init__(self, source: ConsortiumPolicy | PolicyFile | None, default_min_per_aggregate: int) -> None:
        self._source = source
        self._default_min = default_min_per_aggregate

    def current(self) -> ConsortiumPolicy | None:
        source = self._source
        return source.current() if isinstance(source, PolicyFile) else source

    def min_per_aggregate(self) -> int:
        """No aggregate is released with fewer contributors (the policy's, else the config's)."""
        policy = self.current()
        return policy.min_silos_per_aggregate if policy else self._default_min


class Specs:
    """Job specs parsed once from the store (a stored spec that no longer validates is refused)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._specs: dict[str, JobSpec] = {}

    def remember(self, job_id: str, spec: JobSpec) -> None:
        self._specs[job_id] = spec

    def get(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            row = self._store.job(job_id)
            if row is None:
                raise NotFound(f"unknown job {job_id!r}")
            try:
                spec = job_spec_from_json(row.spec_json, f"stored spec of job {job_id}")
            except ConfigError as exc:
                problems = "; ".join(f"{f}: {r}" for f, r in exc.problems)
                raise PreconditionFailed(f"job {job_id}: invalid stored spec ({problems})") from None
            self._specs[job_id] = spec
        return spec
