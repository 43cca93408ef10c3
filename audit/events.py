"""Where parties record what happened. The role packages call ``record``; whether that lands in a
structured log only or also in the signed audit chain is decided where the sink is built."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from audit.structlog import get_logger, log_event


class EventSink(Protocol):
    @property
    def head(self) -> str: ...

    def record(
        self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **details: Any
    ) -> None: ...


class LogSink:
    """Structured log lines only."""

    def __init__(self, name: str) -> None:
        self._logger = get_logger(name)

    @property
    def head(self) -> str:
        return ""  # no signed chain behind a plain log

    def record(
        self, event: str, actor: str, *, job: str | None = None, round: int | None = None, **details: Any
    ) -> None:
        level = logging.WARNING if event.endswith(("refused", "failed", "rejected")) else logging.INFO
        log_event(self._logger, event, level, actor=actor, job=job, round=round, **details)
