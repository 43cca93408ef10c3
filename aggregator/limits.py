"""Bounds the aggregator applies at its edge, before it reads or stores anything a caller sent.

Three kinds of bound live here, so that no handler has to remember them:

* field bounds of request messages (``check_request``): job ids are safe identifiers of bounded
  length, free text (reasons) is bounded in count and length, metrics are few, named by safe
  identifiers and finite. A refusal names the field and echoes at most a short prefix of the value.
* concurrency per identity (``StreamLimiter``): streaming and long-poll RPCs run on their own thread
  pool, and one certificate holds at most a few of them at once, so a member holding many idle
  streams cannot take the threads every other caller needs.
* server-side deadlines on streams (``StreamWatchdog``): a client stream that sends nothing for a
  while, or any stream open for too long, is cancelled (its upload then rolls back).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aggregator.core.errors import InvalidArgument
from protocol.messages import MAX_REASON_CHARS, MAX_REASONS
from protocol.names import MAX_JOB_ID_CHARS, is_safe_name

T = TypeVar("T")

METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,47}$")
MAX_METRICS = 16
MAX_SPEC_CHARS = 256 << 10  # a job spec (TOML): thousands of columns fit
AUDIT_HEAD = re.compile(r"^[0-9a-f]{64}$")  # a party's audit head: SHA-256 hex
ECHO_CHARS = 32  # how much of a refused value an error message or audit record repeats


def echo(value: str) -> str:
    """A refused value as it may appear in an error or audit record: a short, printable prefix."""
    text = value[:ECHO_CHARS].encode("unicode_escape").decode("ascii")
    return repr(text) + (f" (+{len(value) - ECHO_CHARS} more characters)" if len(value) > ECHO_CHARS else "")


def check_job_id(job_id: str, field_name: str = "job_id") -> str:
    if not is_safe_name(job_id, MAX_JOB_ID_CHARS):  # the one rule (protocol/names.py), as the silos check it
        raise InvalidArgument(
            f"{field_name}: {echo(job_id)} is not a safe identifier for a job id "
            "(1-80 letters, digits, '.', '_' or '-'); "
            "copy it from `cipherfed job list`",
        )
    return job_id


def check_name(value: str, field_name: str) -> str:
    if not is_safe_name(value):  # relay kinds and party names
        raise InvalidArgument(
            f"{field_name}: {echo(value)} is not a safe identifier (1-64 letters, digits, '.', '_' or '-')"
        )
    return value


def check_text(value: str, field_name: str, limit: int = MAX_REASON_CHARS) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{field_name}: {len(value)} characters; at most {limit} (shorten the text)")
    return value


def check_audit_head(value: str, field_name: str = "audit_head") -> str:
    if value and not AUDIT_HEAD.fullmatch(value):
        raise InvalidArgument(f"{field_name}: {echo(value)} is not an audit head (64 hex digits, or empty)")
    return value


def check_reasons(reasons: list[str], field_name: str = "reasons") -> list[str]:
    if len(reasons) > MAX_REASONS:
        raise InvalidArgument(f"{field_name}: {len(reasons)} reasons; at most {MAX_REASONS}")
    for i, reason in enumerate(reasons):
        check_text(reason, f"{field_name}[{i}]")
    return reasons


def check_metrics(metrics: dict[str, float], field_name: str = "metrics") -> dict[str, float]:
    """At most MAX_METRICS finite values named by safe identifiers."""
    if len(metrics) > MAX_METRICS:
        raise InvalidArgument(f"{field_name}: {len(metrics)} metrics; at most {MAX_METRICS} per report")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not METRIC_NAME.fullmatch(name):
            raise InvalidArgument(
                f"{field_name}: {echo(name)} is not a metric name (a letter or '_', then up to 47 letters, "
                "digits, '_', '.' or '-')",
            )
        if not math.isfinite(value):
            raise InvalidArgument(f"{field_name}[{name}]: {value!r} is not a finite number")
        out[name] = float(value)
    return out


# Field name -> check, applied to every unary request that has the field (set or not, a proto3
# scalar always reads as its default). Streamed messages are checked by their handlers.
_FIELD_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "job_id": lambda v, f: check_job_id(v, f) if v else v,
    "reason": lambda v, f: check_text(v, f),
    "reasons": lambda v, f: check_reasons(list(v), f),
    "metrics": lambda v, f: check_metrics(dict(v), f),
    "scope": lambda v, f: check_job_id(v, f) if v else v,  # "consortium", a job id or a key fingerprint
    "audit_head": check_audit_head,
    "spec_toml": lambda v, f: check_text(v, f, MAX_SPEC_CHARS),
    "kind": lambda v, f: check_name(v, f) if v else v,
    "sender": lambda v, f: check_name(v, f) if v else v,
}


def check_request(request: Any) -> None:
    """Refuse a unary request whose bounded fields are out of bounds (raises InvalidArgument)."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return
    for name, check in _FIELD_CHECKS.items():
        if name in descriptor.fields_by_name:
            check(getattr(request, name), name)


# ---------------------------------------------------------------------------------------------
@dataclass
class StreamLimiter:
    """How many streaming / long-poll RPCs each identity, and everyone together, may hold."""

    per_identity: int
    total: int
    _held: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, who: str) -> str | None:
        """Take a slot for ``who``; returns None, or why no slot is given."""
        with self._lock:
            mine = self._held.get(who, 0)
            if mine >= self.per_identity:
                return (
                    f"this certificate already holds {mine} open streams (at most {self.per_identity} per "
                    "identity); finish or cancel one before opening another"
                )
            if sum(self._held.values()) >= self.total:
                return f"the aggregator is serving its maximum of {self.total} streams; retry shortly"
            self._held[who] = mine + 1
            return None

    def release(self, who: str) -> None:
        with self._lock:
            left = self._held.get(who, 0) - 1
            if left > 0:
                self._held[who] = left
            else:
                self._held.pop(who, None)

    def held(self, who: str) -> int:
        with self._lock:
            return self._held.get(who, 0)


class Slot:
    """One held limiter slot; released exactly once, whichever of the handler's end or the RPC's
    termination callback comes first."""

    def __init__(self, limiter: StreamLimiter, who: str) -> None:
        self._limiter, self._who = limiter, who
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._limiter.release(self._who)


class Cancellable(Protocol):
    """What the watchdog needs of a call: a way to cancel it (a ``grpc.ServicerContext`` has one)."""

    def cancel(self) -> Any: ...


@dataclass
class _Watched:
    context: Cancellable
    label: str
    started: float
    last: float
    idle_s: float | None
    max_s: float
    on_cancel: Callable[[str], None]


class StreamWatchdog:
    """One thread that cancels streams which stay idle, or open, for too long.

    grpc's sync server blocks a handler in ``next(request_iterator)`` for as long as the client
    keeps the stream open without sending; only cancelling the call (``context.cancel()``) wakes it.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval_s = interval_s
        self._watched: dict[int, _Watched] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stream-watchdog", daemon=True)
        self._thread.start()

    def watch(
        self,
        context: Cancellable,
        label: str,
        idle_s: float | None,
        max_s: float,
        on_cancel: Callable[[str], None],
    ) -> int:
        now = time.monotonic()
        with self._lock:
            self._next_id += 1
            self._watched[self._next_id] = _Watched(context, label, now, now, idle_s, max_s, on_cancel)
            return self._next_id

    def touch(self, handle: int) -> None:
        with self._lock:
            watched = self._watched.get(handle)
            if watched is not None:
                watched.last = time.monotonic()

    def forget(self, handle: int) -> None:
        with self._lock:
            self._watched.pop(handle, None)

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            now = time.monotonic()
            expired: list[tuple[_Watched, str]] = []
            with self._lock:
                for handle, w in list(self._watched.items()):
                    if w.idle_s is not None and now - w.last > w.idle_s:
                        why = f"{w.label}: nothing received for {w.idle_s:g} s; the stream was cancelled"
                    elif now - w.started > w.max_s:
                        why = f"{w.label}: open longer than {w.max_s:g} s; the stream was cancelled"
                    else:
                        continue
                    del self._watched[handle]
                    expired.append((w, why))
            for w, why in expired:
                try:
                    w.on_cancel(why)
                finally:
                    w.context.cancel()


def touching(requests: Iterator[T], watchdog: StreamWatchdog, handle: int) -> Iterator[T]:
    """The request stream, telling the watchdog each time a message arrives."""
    for message in requests:
        watchdog.touch(handle)
        yield message
