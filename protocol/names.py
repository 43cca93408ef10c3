"""Safe identifiers: the one rule for every name that crosses a trust boundary.

Participant and party names, column names, job names and job ids come from people and from other
parties (a coordinator's job spec, an aggregator's task). Some of them end up in file paths
(``state_dir / "jobs" / job_id``), in SQL parameters, log lines and audit records, so each one is
checked here, the same way on every side: 1 to 64 characters (job ids: 80, they carry a suffix),
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit. That excludes ``/``,
``\\``, ``..`` as a whole name, spaces, control characters and empty names.
"""

from __future__ import annotations

import re

MAX_NAME_CHARS = 64
MAX_JOB_ID_CHARS = 80  # a job id is the job name, '-', and a random suffix
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
MAX_FACTORY_CHARS = 200

SAFE_NAME_RULE = "use 1-{n} letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_safe_name(value: object, max_chars: int = MAX_NAME_CHARS) -> bool:
    """True for a string that is safe as a path component, a log field and a database key."""
    return isinstance(value, str) and 0 < len(value) <= max_chars and _SAFE.fullmatch(value) is not None


def safe_name(value: str, what: str = "name", max_chars: int = MAX_NAME_CHARS) -> str:
    """Return ``value`` if it is a safe identifier, else raise ValueError naming ``what`` and the rule."""
    if not is_safe_name(value, max_chars):
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, not {type(value).__name__}")
        shown = repr(value[:40] + ("..." if len(value) > 40 else ""))
        raise ValueError(f"{what} {shown} is not a safe identifier: {SAFE_NAME_RULE.format(n=max_chars)}")
    return value


def safe_job_id(value: str) -> str:
    """A job id (aggregator-assigned) checked before any party uses it, e.g. as a directory name."""
    return safe_name(value, "job id", MAX_JOB_ID_CHARS)


def factory_reference(value: str) -> str:
    """``package.module:function`` and nothing else (no paths, no arguments, no attribute chains after ':')."""
    if len(value) > MAX_FACTORY_CHARS or _FACTORY.fullmatch(value) is None:
        raise ValueError(
            f"factory {value[:60]!r} must be 'package.module:function' (Python identifiers, at most "
            f"{MAX_FACTORY_CHARS} characters)"
        )
    return value
