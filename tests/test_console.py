"""`cipherfed console` against a real aggregator (mTLS on 127.0.0.1), in a real headless Chromium.

Screenshots of every page are written to the test's temporary folder, and to docs/images when
CONSOLE_SCREENSHOTS=docs/images is set (that is how the images in docs/console.md were made).
"""

import hashlib
import http.client
import os
import re
import time
from pathlib import Path

import pytest

from cipherfed.localconsortium import LocalConsortium, job_toml
from crypto import pki
from protocol import cipherfed_pb2 as pb
from tests.browser import Browser
from tests.helpers import HandSilo, tiny_update

pytestmark = pytest.mark.slow

HOSTILE = '<img id="pwn" src="x" onerror="window.pwned=1">'


def _fingerprint(cert: Path) -> str:
    return pki.certificate_fingerprint(pki.load_certificate(cert))


def _write_policy(c: LocalConsortium) -> Path:
    members = [
        ("coordinator", "admin", c.admin_dir / "coordinator.crt"),
        ("auditor", "auditor", c.admin_dir / "auditor.crt"),
    ]
    members += [(n, "silo", c.nodes[n].cert) for n in ("silo-a", "silo-b", "silo-c")]
    text = (
        f'kind = "consortium"\nconsortium = "{c.consortium}"\nmin_silos_per_aggregate = 2\n'
        'allowed_he_profiles = ["sum"]\nmax_rounds = 50\njob_submitters = ["coordinator"]\n'
    )
    for name, role, cert in members:
        text += f'\n[[members]]\nname = "{name}"\nrole = "{role}"\ncert_fingerprint = "{_fingerprint(cert)}"\n'
    never_seen = hashlib.sha256(b"silo-e: a member that never connects").hexdigest()  # not a placeholder pattern
    text += '\n[[members]]\nname = "silo-e"\nrole = "silo"\ncert_fingerprint = "' + never_seen + '"\n'
    path = c.agg_dir / "consortium-policy.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    c = LocalConsortium(tmp_path_factory.mktemp("console"), ["silo-a", "silo-b", "silo-c", "silo-d"])
    c.provision()
    policy = _write_policy(c)
    c.write_aggregator_config(extra=f'consortium_policy = "{policy}"')
    c.start_aggregator()
    admin = c.write_admin_config()
    log = c.logs / "console.log"
    c._spawn(
        "console",
        ["console", "--config", str(admin), "--refresh", "0.3", "--audit-dir", str(c.agg_dir / "state")],
    )
    deadline = time.time() + 60
    url = None
    while url is None:
        match = re.search(
            r"open: (http://127\.0\.0\.1:(\d+)/\?token=([\w-]+))", log.read_text() if log.exists() else ""
        )
        if match:
            url, port, token = match.group(1), int(match.group(2)), match.group(3)
        elif c.processes["console"].poll() is not None or time.time() > deadline:
            raise AssertionError("the console did not start:\n" + (log.read_text() if log.exists() else ""))
        else:
            time.sleep(0.1)
    c.console_url, c.console_port, c.console_token = url, port, token
    yield c
    c.stop_all()


def _get(port: int, path: str, host: str | None = None, method: str = "GET", cookie: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    return response.status, dict(response.getheaders()), body


def test_console_listens_on_loopback_only_and_requires_its_token(console):
    port, token = console.console_port, console.console_token
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
    ]
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only
    assert _get(port, "/jobs")[0] == 401
    for path in ("/static/console.js", "/jobs/live", "/members", "/audit", "/audit/report", "/jobs/x"):
        assert _get(port, path)[0] == 401, path  # every route, live streams and the report included
    assert _get(port, "/jobs?token=" + "x" * len(token))[0] == 401
    assert _get(port, f"/jobs?token={token}", host="evil.example:80")[0] == 403  # DNS rebinding
    assert _get(port, f"/jobs?token={token}", host=f"127.0.0.1.evil.example:{port}")[0] == 403
    assert _get(port, f"/jobs?token={token}", method="POST")[0] == 405  # read-only
    status, headers, _ = _get(port, f"/jobs?token={token}")
    assert status == 303 and headers["location"] == "/jobs"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    status, headers, body = _get(port, "/jobs", cookie=cookie.split(";")[0])
    assert status == 200 and "Jobs" in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    assert _get(port, "/jobs", cookie=f"cipherfed_console_{port}=wrong")[0] == 401


def test_a_job_appears_and_its_rounds_advance_without_a_reload(console, tmp_path):
    c = console
    shots = [tmp_path / "shots"] + (
        [Path(os.environ["CONSOLE_SCREENSHOTS"])] if os.environ.get("CONSOLE_SCREENSHOTS") else []
    )
    browser = Browser(tmp_path / "profile")
    try:
        browser.goto(c.console_url)
        assert browser.eval("location.pathname") == "/jobs" and "token" not in browser.eval("location.href")
        browser.eval("window.__sameDocument = 'jobs'")  # survives only if the page never reloads

        spec = job_toml(
            "heart-study",
            ["silo-a", "silo-b", "silo-c"],
            c.fingerprint,
            ["x"],
            rounds=3,
            round_timeout_s=300,
            scaling="local",
        )
        job = c.stub("coordinator").SubmitJob(pb.SubmitJobRequest(spec_toml=spec), timeout=30).job_id
        browser.wait_for(f"document.querySelector('tr[data-job=\"{job}\"]') !== null", 15)
        assert browser.eval("window.__sameDocument") == "jobs"

        browser.goto(f"http://127.0.0.1:{c.console_port}/jobs/{job}")
        browser.eval("window.__sameDocument = 'job'")
        browser.wait_for('document.querySelector(\'tr[data-round="0"][data-status="open"]\') !== null', 15)

        silos = {n: HandSilo(c, n) for n in ("silo-a", "silo-b", "silo-c")}
        # a member that declines a round with hostile text: shown as text, never run as markup
        silos["silo-c"].stub.Decline(
            pb.DeclineRequest(job_id=job, round=0, reasons=[f"site policy: outside the allowed hours {HOSTILE}"]),
            timeout=10,
        )
        for rnd in range(3):
            senders = ("silo-a", "silo-b") if rnd == 0 else ("silo-a", "silo-b", "silo-c")
            for i, name in enumerate(senders):
                silos[name].send(*silos[name].build(job, rnd, tiny_update(10 * rnd + i), 50.0 + i))
            for i, name in enumerate(senders):
                acc = 0.70 + 0.06 * rnd + 0.01 * i  # what a hand-driven silo reports; the console only plots it
                silos[name].stub.ReportMetrics(
                    pb.MetricsReport(job_id=job, round=rnd, metrics={"accuracy": acc, "auc": acc + 0.05}), timeout=10
                )
            browser.wait_for(f'document.querySelector(\'tr[data-round="{rnd}"][data-status="closed"]\') !== null', 20)
            if rnd == 0:
                browser.wait_for("document.querySelector('tr[data-round=\"1\"]') !== null", 20)
        browser.wait_for("document.getElementById('job-status').textContent === 'completed'", 20)
        browser.wait_for("document.querySelectorAll('.chart svg').length === 2", 20)
        assert browser.eval("window.__sameDocument") == "job"  # every change arrived without a reload
        assert int(browser.eval("document.getElementById('job').dataset.updates")) >= 4
        text = browser.eval("document.body.innerText")
        assert "outside the allowed hours <img" in text  # the hostile reason is shown as text
        assert browser.eval("document.getElementById('pwn') === null && window.pwned === undefined")
        assert "3 / 3" in text
        for d in shots:
            browser.screenshot(d / "console-job.png")

        browser.goto(f"http://127.0.0.1:{c.console_port}/jobs")
        browser.wait_for(f"document.querySelector('tr[data-job=\"{job}\"] .status.completed') !== null", 10)
        for d in shots:
            browser.screenshot(d / "console-jobs.png")

        browser.goto(f"http://127.0.0.1:{c.console_port}/members")
        rows = browser.eval("[...document.querySelectorAll('tr[data-member]')].map(r => r.innerText)")
        by_name = {r.split()[0]: r for r in rows}
        fp_a = _fingerprint(c.nodes["silo-a"].cert)
        assert fp_a[:16] in by_name["silo-a"] and "Poll" not in by_name["coordinator"]
        assert "never connected" in by_name["silo-e"] and "ok" in by_name["silo-a"]
        for d in shots:
            browser.screenshot(d / "console-members.png")

        browser.goto(f"http://127.0.0.1:{c.console_port}/audit")
        verdict = browser.eval(
            "document.getElementById('verdict').className + ' ' + document.getElementById('verdict').innerText"
        )
        assert verdict.startswith("ok ") and "verified" in verdict
        for d in shots:
            browser.screenshot(d / "console-audit.png")

        browser.goto(f"http://127.0.0.1:{c.console_port}/audit/report")
        assert "compliance report" in browser.eval("document.title")
        assert browser.eval("document.scripts.length") == 0
        for d in shots:
            browser.screenshot(d / "console-report.png")
    finally:
        browser.close()
    for name in ("jobs", "job", "members", "audit", "report"):
        assert (tmp_path / "shots" / f"console-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
