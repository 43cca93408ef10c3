"""The core wired to its storage: ``JobEngine`` is ``core.jobs.Jobs`` over a SQLite ``StateStore``
and aggregate files under ``state_dir/aggregates``. The server and the restart tests build this."""

from __future__ import annotations

from pathlib import Path

from aggregator.aggregate_files import AggregateFiles
from aggregator.core.clock import Clock
from aggregator.core.jobs import Jobs
from aggregator.core.secagg_session import AggregatorCredentials
from aggregator.core.store_contract import JobStore
from aggregator.keyring import PublicKeyring
from audit.events import EventSink
from policies.schema import ConsortiumPolicy, PolicyFile


class JobEngine(Jobs):
    def __init__(
        self,
        store: JobStore,
        keyring: PublicKeyring,
        state_dir: Path,
        events: EventSink,
        min_per_aggregate: int = 2,
        policy: ConsortiumPolicy | PolicyFile | None = None,
        max_update_values: int = 1 << 28,
        allow_plaintext: bool = False,
        allowed_factories: tuple[str, ...] = (),
        clock: Clock | None = None,
        consortium: str = "",
        credentials: AggregatorCredentials | None = None,
    ) -> None:
        super().__init__(
            store,
            AggregateFiles(state_dir / "aggregates"),
            keyring,
            state_dir,
            events,
            min_per_aggregate,
            policy,
            max_update_values,
            allow_plaintext,
            allowed_factories,
            clock,
            consortium,
            credentials,
        )
