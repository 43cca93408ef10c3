"""Filtering audit records for review: by job, event, actor and time."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterable
from typing import Any


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def record_time(record: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))


def select(
    records: Iterable[dict[str, Any]],
    *,
    job: str | None = None,
    event: str | None = None,
    actor: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict[str, Any]]:
    start, end = parse_time(since), parse_time(until)
    chosen = []
    for r in records:
        if job and r.get("job") != job:
            continue
        if event and r.get("event") != event:
            continue
        if actor and r.get("actor") != actor:
            continue
        t = record_time(r)
        if (start and t < start) or (end and t > end):
            continue
        chosen.append(r)
    return sorted(chosen, key=lambda r: (r["ts"], r.get("party", ""), r["seq"]))


def details_text(record: dict[str, Any], width: int = 90) -> str:
    details = {k: v for k, v in (record.get("details") or {}).items() if k != "certificate_pem"}
    text = json.dumps(details, sort_keys=True, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def to_json(records: list[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(r, sort_keys=True, default=str) for r in records)


def to_csv(records: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["ts", "party", "seq", "actor", "event", "job", "round", "details"])
    for r in records:
        writer.writerow(
            [
                r["ts"],
                r.get("party"),
                r["seq"],
                r.get("actor"),
                r.get("event"),
                r.get("job") or "",
                "" if r.get("round") is None else r["round"],
                details_text(r, 10_000),
            ]
        )
    return out.getvalue()
