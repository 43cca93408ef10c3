"""The compliance report: one self-contained HTML file built from the parties' audit logs.

It answers the privacy officer's questions in order: is the record intact; which jobs ran and who
took part; which data each silo used (names and counts, never values); what left each silo and in
what form; which policy decisions were made and why; who holds the encryption key; how much privacy
budget was spent; and how the model trained.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from html import escape
from pathlib import Path
from typing import Any

from cryptography import x509

from audit.svg import line_chart
from audit.verify import Verification, load_records, verify_logs
from protocol.secagg import ATTEMPTS_PER_ROUND
from protocol.version import __version__
from protocol.vocabulary import ENCRYPTED_RELAY_KINDS, JobStatus

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:.2rem} h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4} td:first-child{white-space:nowrap} summary{cursor:pointer}
.ok{background:#e6f4ea;border:1px solid #2e7d32;padding:.8rem}
.bad{background:#fdecea;border:1px solid #c62828;padding:.8rem} .muted{color:#777}
.yes{color:#2e7d32;font-weight:bold} .no{color:#c62828;font-weight:bold} code{font-size:.85rem}
"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return '<p class="muted">none recorded</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, Markup) else escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """Already-escaped HTML."""


def _yes_no(flag: bool) -> Markup:
    return Markup('<span class="yes">yes</span>' if flag else '<span class="no">NO</span>')


def display_name(path: Path) -> str:
    """Enough of the path to tell logs apart (they are usually all called audit.jsonl)."""
    return "/".join(Path(path).parts[-3:])


def _short_ts(ts: str) -> str:
    return ts.replace("T", " ")[:19]


def build_report(paths: list[Path], ca_cert: x509.Certificate | None = None) -> tuple[str, Verification]:
    verification = verify_logs(paths, ca_cert)
    records = sorted(load_records(paths), key=lambda r: r["ts"])
    by_event: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_event[r["event"]].append(r)
    sections = [
        f"<h1>cipherfed compliance report</h1><p class='muted'>generated "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by cipherfed {__version__} from "
        f"{len(paths)} audit log(s): {escape(', '.join(display_name(p) for p in paths))}</p>"
    ]
    status_class = "ok" if verification.ok else "bad"
    problems = "".join(f"<li>{escape(str(p))}</li>" for p in verification.problems[:20])
    sections.append(
        f"<h2>1. Integrity of the record</h2><div class='{status_class}'><b>{escape(verification.summary())}"
        f"</b>{'<ul>' + problems + '</ul>' if problems else ''}<p>Checked: hash chain, sequence, "
        f"ECDSA signature of every record"
        f"{', signer certificates against the consortium CA' if ca_cert is not None else ''}, "
        f"and cross-party anchors (audit heads exchanged with every upload).</p></div>"
    )
    sections.append(_parties(verification))
    sections.append(_jobs(by_event))
    sections.append(_data_used(by_event))
    sections.append(_egress(by_event))
    sections.append(_policy(by_event))
    sections.append(_key_custody(by_event))
    sections.append(_privacy_budget(by_event))
    sections.append(_secure_aggregation(by_event))
    sections.append(_curves(by_event))
    html = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cipherfed compliance report</title>"
        f"<style>{CSS}</style></head><body>{''.join(sections)}</body></html>"
    )
    return html, verification


def _parties(verification: Verification) -> str:
    rows = []
    for log in verification.logs:
        first = log.records[0]["ts"] if log.records else ""
        last = log.records[-1]["ts"] if log.records else ""
        name = display_name(log.path)
        rows.append([log.party or "?", log.role or "?", len(log.records), _short_ts(first), _short_ts(last), name])
    return "<h2>2. Parties and logs</h2>" + _table(["party", "role", "records", "first", "last", "file"], rows)


def _jobs(by_event: dict[str, list[dict[str, Any]]]) -> str:
    out = ["<h2>3. Jobs: timeline, participants and rounds</h2>"]
    ends = {r["job"]: r for e in ("job_completed", "job_failed", "job_aborted") for r in by_event.get(e, [])}
    rows = []
    for r in by_event.get("job_submitted", []):
        d = r["details"]
        end = ends.get(r["job"])
        rows.append(
            [
                _short_ts(r["ts"]),
                r["job"],
                r["actor"],
                ", ".join(d.get("participants", [])),
                d.get("he_profile", ""),
                d.get("rounds", ""),
                (end["event"].replace("job_", "") + " " + _short_ts(end["ts"])) if end else JobStatus.RUNNING,
            ]
        )
    out.append(_table(["submitted (UTC)", "job", "by", "participants", "HE profile", "rounds", "outcome"], rows))
    releases: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in by_event.get("aggregate_released", []):
        releases[r["job"]].append(r)
    for job, rs in releases.items():
        out.append(f"<h3>{escape(job)}: released aggregates</h3>")
        out.append(
            _table(
                ["round", "released (UTC)", "contributors", "bytes in", "wall s"],
                [
                    [
                        r["round"],
                        _short_ts(r["ts"]),
                        ", ".join(r["details"].get("contributors", [])),
                        f"{r['details'].get('bytes_in', 0):,}",
                        r["details"].get("wall_s", ""),
                    ]
                    for r in rs
                ],
            )
        )
    failed = by_event.get("round_failed", [])
    if failed:
        out.append("<h3>Rounds that failed (no aggregate released)</h3>")
        out.append(
            _table(
                ["job", "round", "attempt", "reason"],
                [[r["job"], r["round"], r["details"].get("attempt"), r["details"].get("reason")] for r in failed],
            )
        )
    return "".join(out)


def _data_used(by_event: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for r in sorted(by_event.get("dataset_used", []), key=lambda r: (r["party"], r["ts"])):
        columns = [str(c) for c in r["details"].get("columns", [])]
        listing = f"{len(columns)}: {', '.join(columns)}"  # spelled out, never folded: the report is printed
        rows.append([r["party"], r["job"], r["details"].get("dataset", ""), r["details"].get("rows", ""), listing])
    return (
        "<h2>4. Data used at each silo</h2><p class='muted'>Names and counts only: no value ever leaves a silo "
        "or enters a log. The dataset fingerprint changes whenever the file does.</p>"
        + _table(["silo", "job", "dataset fingerprint", "rows", "columns"], rows)
    )


def _egress(by_event: dict[str, list[dict[str, Any]]]) -> str:
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for r in by_event.get("update_sent", []):
        key = (r["party"], r["job"])
        t = totals.setdefault(key, {"uploads": 0, "bytes": 0, "encrypted": True, "profile": set()})
        t["uploads"] += 1
        t["bytes"] += int(r["details"].get("bytes", 0))
        t["encrypted"] = t["encrypted"] and bool(r["details"].get("encrypted", False))
        t["profile"].add(str(r["details"].get("profile", "")))
    rows = [
        [silo, job, t["uploads"], f"{t['bytes']:,}", _yes_no(t["encrypted"]), ", ".join(sorted(t["profile"]))]
        for (silo, job), t in sorted(totals.items())
    ]
    vertical = [
        [
            r["party"],
            r["job"],
            r["details"].get("to", ""),
            r["details"].get("form", ""),
            r["details"].get("messages", 0),
            f"{int(r['details'].get('bytes', 0)):,}",
            _yes_no(bool(r["details"].get("encrypted")))
            if r["details"].get("kind") in ENCRYPTED_RELAY_KINDS
            else Markup('<span class="muted">n/a</span>'),
        ]
        for r in sorted(by_event.get("data_sent", []), key=lambda r: (r["party"], r["job"] or ""))
    ]
    return (
        "<h2>5. What left each silo</h2><p class='muted'>Every byte that left a silo went to the aggregator as "
        "part of a signed upload; encrypted uploads are CKKS ciphertexts the aggregator cannot decrypt.</p>"
        + (_table(["silo", "job", "uploads", "bytes", "encrypted", "profile"], rows) if rows or not vertical else "")
        + (
            "<h3>Vertical jobs: messages relayed through the aggregator</h3>"
            + _table(["party", "job", "to", "what, in which form", "messages", "bytes", "encrypted"], vertical)
            if vertical
            else ""
        )
    )


def _outcome(details: dict[str, Any]) -> tuple[bool, tuple[tuple[str, bool], ...]]:
    """What a decision decided, rule by rule (the wording may carry round numbers; the outcome does not)."""
    rules = tuple((str(r.get("rule")), bool(r.get("passed"))) for r in details.get("rules", []))
    return bool(details.get("allowed")), rules


def _policy(by_event: dict[str, list[dict[str, Any]]]) -> str:
    """Each party's first decision on a job in full; after that only decisions whose outcome changed.

    A silo re-checks its site policy before every upload, so a 10-round job holds 11 identical
    eleven-rule explanations per silo; repeating them hides the one decision that differs.
    """
    rows: list[list[Any]] = []
    last: dict[tuple[str, str], tuple[bool, tuple[tuple[str, bool], ...]]] = {}
    repeats: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in by_event.get("policy_decision", []):
        d, key = r["details"], (r["party"], r.get("job") or "")
        outcome = _outcome(d)
        if last.get(key) == outcome:
            repeats[key].append(str(d.get("stage", "")))
            continue
        before = last.get(key)
        last[key] = outcome
        reasons = d.get("reasons", [])
        if before is not None and outcome[0]:  # allowed again: say which rules changed, not all eleven again
            flipped = {rule for rule, passed in outcome[1] if (rule, not passed) in before[1]}
            why = [f"{r.get('rule')}: {r.get('why')}" for r in d.get("rules", []) if r.get("rule") in flipped]
            reasons = ["changed: " + ("; ".join(why) or "the set of rules checked")]
        rows.append(
            [_short_ts(r["ts"]), r["party"], key[1], d.get("stage", ""), _yes_no(outcome[0]), "; ".join(reasons)]
        )
    for (party, job), stages in repeats.items():
        allowed = last[(party, job)][0]
        span = stages[0] if len(stages) == 1 else f"{stages[0]} ... {stages[-1]}"
        rows.append(
            [
                "",
                party,
                job,
                f"{len(stages)} more ({span})",
                _yes_no(allowed),
                "unchanged: the same rules, same outcome",
            ]
        )
    for r in by_event.get("job_declined", []):
        rows.append(
            [
                _short_ts(r["ts"]),
                r["party"] if r["party"] == r["actor"] else f"{r['actor']} (reported)",
                r.get("job") or "",
                "declined",
                _yes_no(False),
                "; ".join(r["details"].get("reasons", [])),
            ]
        )
    return (
        "<h2>6. Policy decisions</h2><p class='muted'>Each party's first decision on each job is shown with every "
        "rule; later decisions appear only when their outcome changed, and the rest are counted.</p>"
        + _table(["time (UTC)", "party", "job", "stage", "allowed", "reasons"], rows)
    )


def _key_custody(by_event: dict[str, list[dict[str, Any]]]) -> str:
    """Which silo holds each HE secret key, who received a wrapped copy, and which jobs used it."""
    keys: dict[str, dict[str, Any]] = {}

    def entry(fingerprint: str) -> dict[str, Any]:
        return keys.setdefault(
            fingerprint,
            {
                "custodian": "",
                "scope": "",
                "created": "",
                "wrapped": [],
                "stored": "",
                "unwrapped": set(),
                "jobs": set(),
            },
        )

    for r in by_event.get("key_generated", []):
        e = entry(str(r["details"].get("fingerprint", "")))
        e.update(custodian=r["party"], scope=r["details"].get("scope", ""), created=_short_ts(r["ts"]))
    for r in by_event.get("key_wrapped", []):
        entry(str(r["details"].get("fingerprint", "")))["wrapped"] = list(r["details"].get("recipients", []))
    for r in by_event.get("key_material_stored", []):
        fingerprint = r["details"].get("fingerprint")
        if fingerprint:
            entry(str(fingerprint))["stored"] = _short_ts(r["ts"])
    for r in by_event.get("public_contexts_loaded", []):  # provisioned into the aggregator's keys_dir
        for fingerprint in r["details"].get("fingerprints", []):
            e = entry(str(fingerprint))
            e["stored"] = e["stored"] or f"loaded {_short_ts(r['ts'])}"
    for r in by_event.get("key_unwrapped", []):
        entry(str(r["details"].get("fingerprint", "")))["unwrapped"].add(r["party"])
    for r in by_event.get("job_accepted", []):
        fingerprint = r["details"].get("key_fingerprint")
        if fingerprint and fingerprint != "plaintext":  # the "none" profile's comparison runs use no key
            entry(str(fingerprint))["jobs"].add(str(r.get("job")))
    rows = [
        [
            fp,
            e["custodian"]
            or Markup('<span class="muted">not in these logs (provisioned outside `keys create`)</span>'),
            e["scope"],
            e["created"],
            ", ".join(e["wrapped"]),
            e["stored"],
            ", ".join(sorted(e["unwrapped"])),
            ", ".join(sorted(e["jobs"])),
        ]
        for fp, e in sorted(keys.items())
        if fp
    ]
    return (
        "<h2>7. Key custody</h2><p class='muted'>The HE secret key is generated at one member silo (the custodian) "
        "and kept there; each other member receives a copy wrapped to its own certificate, relayed by the aggregator, "
        "which stores only the public context and opaque blobs. Neither the aggregator nor the coordinator holds a "
        "secret key.</p>"
        + _table(
            [
                "key fingerprint",
                "custodian",
                "scope",
                "created (UTC)",
                "wrapped for",
                "public part at aggregator",
                "unwrapped by",
                "jobs",
            ],
            rows,
        )
    )


def _privacy_budget(by_event: dict[str, list[dict[str, Any]]]) -> str:
    spent: dict[tuple[str, str], float] = defaultdict(float)
    for r in by_event.get("update_sent", []):
        eps = r["details"].get("dp_epsilon")
        if eps is not None:
            spent[(r["party"], r["job"])] = max(spent[(r["party"], r["job"])], float(eps))
    rows = [[silo, job, f"{eps:.3f}"] for (silo, job), eps in sorted(spent.items())]
    totals = [
        [
            r["party"],
            r["details"].get("dataset", ""),
            f"{float(r['details'].get('total_epsilon', 0)):.3f}",
            r["details"].get("budget", ""),
        ]
        for r in by_event.get("dp_budget", [])
    ]
    note = (
        "<p class='muted'>No job used differential privacy: updates were protected by encryption only.</p>"
        if not rows and not totals
        else ""
    )
    return (
        "<h2>8. Differential-privacy budget</h2>"
        + note
        + (_table(["silo", "job", "epsilon spent (cumulative in job)"], rows) if rows else "")
        + (_table(["silo", "dataset", "total epsilon", "budget"], totals) if totals else "")
    )


def _session_name(session: object) -> str:
    """A secure-aggregation session number as the round and attempt it belongs to."""
    if not isinstance(session, int) or session < 0:
        return str(session)
    return f"{session // ATTEMPTS_PER_ROUND} (attempt {session % ATTEMPTS_PER_ROUND})"


def _by_session(rows: list[list[Any]]) -> list[list[Any]]:
    """Rows of (job, session, silo, revealed) in round order, the session shown as its round and attempt."""
    ordered = sorted(rows, key=lambda row: (str(row[0]), row[1] if isinstance(row[1], int) else -1, str(row[2])))
    return [[job, _session_name(session), silo, what] for job, session, silo, what in ordered]


def _secure_aggregation(by_event: dict[str, list[dict[str, Any]]]) -> str:
    """Who revealed what: each silo's unmasking answers and refusals, each round's unmasking at the aggregator."""
    seen: set[tuple[str, str, Any, str]] = set()
    rows = []
    for event in ("secagg_answered", "secagg_refused"):
        for r in by_event.get(event, []):
            d = r["details"]
            key = (r["actor"], r["job"], d.get("session"), event)
            if key in seen:  # the same record appears once per log that holds it
                continue
            seen.add(key)
            if event == "secagg_answered":
                what = (
                    f"self-seed shares of {', '.join(d.get('self_shares_of', [])) or 'nobody'}; mask-key shares of "
                    f"{', '.join(d.get('mask_shares_of', [])) or 'nobody (no silo dropped)'}"
                )
            else:
                what = f"refused ({d.get('step', '')}): {d.get('reason', '')}"
            rows.append([r["job"], d.get("session"), r["actor"], what])
    rounds = [
        [
            r["job"],
            r["round"] if r.get("round") is not None else f"session {r['details'].get('session', '')}",
            "unmasked" if r["event"] == "secagg_unmasked" else "failed: " + str(r["details"].get("reason", "")),
            ", ".join(r["details"].get("dropped", [])) or "none",
        ]
        for r in sorted(by_event.get("secagg_unmasked", []) + by_event.get("secagg_failed", []), key=lambda r: r["ts"])
    ]
    if not rows and not rounds:
        return (
            "<h2>9. Secure aggregation</h2><p class='muted'>No job used secure aggregation: an aggregator colluding "
            "with one silo could have decrypted individual updates (docs/security.md).</p>"
        )
    return (
        "<h2>9. Secure aggregation</h2><p class='muted'>Each survivor reveals, per round, the self-seed share of "
        "every silo that contributed and the mask-key share of every silo that dropped, never both for one silo. "
        "A refusal means the silo saw a request that would have revealed more.</p>"
        + (_table(["job", "round", "silo", "revealed"], _by_session(rows)) if rows else "")
        + (_table(["job", "round", "unmasking", "dropped silos"], rounds) if rounds else "")
    )


def _curves(by_event: dict[str, list[dict[str, Any]]]) -> str:
    per_job: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    seen: set[tuple[str, str, int]] = set()
    for r in by_event.get("metrics_reported", []):
        metrics = r["details"].get("metrics", {})
        key = (r["job"], r["actor"], int(r["round"]))
        if "accuracy" in metrics and key not in seen:  # the same report appears once per log that holds it
            seen.add(key)
            per_job[r["job"]][r["actor"]].append((float(r["round"]), float(metrics["accuracy"])))
    charts = [
        line_chart(series, f"{job}: validation accuracy at each silo", "round", "accuracy")
        for job, series in per_job.items()
    ]
    return "<h2>10. Training curves</h2>" + ("".join(charts) if charts else "<p class='muted'>no metrics reported</p>")


def write_report(paths: list[Path], output: Path, ca_cert: x509.Certificate | None = None) -> Verification:
    html, verification = build_report(paths, ca_cert)
    output.write_text(html, encoding="utf-8")
    return verification
