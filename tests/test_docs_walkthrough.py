"""docs/install-node.md and docs/run-consortium.md, followed literally: every party in its own directory.

The pages mark what to run (see "How to read the commands" at the top of each): every ```bash block
opens with `# <party>: <what>`, and `# copy A:FILE -> B:FILE` lines say which file travels where. This
test runs the blocks exactly as written with bash, in the order a coordinator and three hospitals
would, copying only the files the pages say to copy, with real processes, until a job completes and
`cipherfed audit verify` passes. Not run: `# settings` (the test supplies its own values: a free port
on 127.0.0.1, `state` as state_dir), `# root:` blocks (system installs) and `(when needed)` blocks.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
NODES = ["hospital-1", "hospital-2", "hospital-3"]
CUSTODIAN = "hospital-1"
COPY = re.compile(r"^# copy (\S+?):(\S+) -> (\S+?):(\S+)$")


@dataclass
class Block:
    doc: str
    party: str  # node, coordinator, aggregator, custodian, root, settings
    label: str
    lines: list[str]


def blocks(doc: str) -> list[Block]:
    found = []
    for body in re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S):
        first, *rest = body.splitlines()
        match = re.match(r"^# ([a-z-]+)(?: \(when needed\))?: (.+)$", first)
        assert match, f"{doc}: a bash block must open with '# <party>: <what>', not {first!r}"
        party = match.group(1) + (" (when needed)" if "(when needed)" in first else "")
        found.append(Block(doc, party, match.group(2), rest))
    return found


def synthetic_cohort(path: Path, seed: int, rows: int = 160) -> None:
    """The institution's own data: the columns the documented job spec uses."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5)) * [12, 4, 15, 9, 1.1] + [60, 27, 130, 80, 6.0]
    logit = 0.05 * (x[:, 0] - 60) + 0.2 * (x[:, 1] - 27) + 0.8 * (x[:, 4] - 6.0)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    with open(path, "w") as f:
        f.write("age,bmi,sbp,dbp,hba1c,readmitted_30d\n")
        for row, label in zip(x, y, strict=True):
            f.write(",".join(f"{v:.2f}" for v in row) + f",{label}\n")


class Walkthrough:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs = {p: root / p for p in ["coordinator", "aggregator", *NODES]}
        for d in self.dirs.values():
            d.mkdir(parents=True)
        port = _free_port()
        bin_dir = root / "bin"  # `cipherfed` on PATH, as after the documented install
        bin_dir.mkdir()
        (bin_dir / "cipherfed").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cipherfed "$@"\n')
        (bin_dir / "cipherfed").chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            "AGGREGATOR": f"127.0.0.1:{port}",
            "LISTEN": f"127.0.0.1:{port}",
            "STATE_DIR": "state",
        }
        self.procs: list[subprocess.Popen] = []
        self.starting: list[tuple[str, subprocess.Popen, Path]] = []
        self.ran: list[str] = []
        self.t0 = time.time()

    def party_dir(self, party: str, node: str | None) -> Path:
        name = {"custodian": CUSTODIAN, "node": node}.get(party, party)
        assert name in self.dirs, f"unknown party {party!r}"
        return self.dirs[name]

    def copy(self, line: str, node: str | None) -> None:
        src_party, src, dst_party, dst = COPY.match(line).groups()

        def expand(text: str) -> str:
            return text.replace("$NODE", node or "$NODE").replace("$STATE_DIR", self.env["STATE_DIR"])

        source = self.party_dir(expand(src_party), node) / expand(src)
        target = self.party_dir(expand(dst_party), node) / expand(dst)
        assert source.exists(), f"the docs say to copy {line!r} but {source} does not exist"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)

    def run(self, block: Block, node: str | None = None) -> str:
        """Run one block in its party's directory: shell lines with bash, copy lines as copies, in order."""
        cwd = self.party_dir(block.party, node)
        env = {**self.env, **({"NODE": node} if node else {})}
        out, script = [], []

        def flush() -> None:
            if script:
                out.append(self._bash("\n".join(script), cwd, env, block))
                script.clear()

        for line in block.lines:
            if COPY.match(line):
                flush()
                self.copy(line, node)
            elif re.match(r"^cipherfed (aggregator|node) start\b", line):
                flush()
                self._background(line, cwd, env)
            else:
                script.append(line)
        flush()
        self.ran.append(f"{block.doc}: {block.party}: {block.label}")
        print(f"{time.time() - self.t0:6.1f} s  {block.doc}: {block.party}: {block.label} {node or ''}")
        return "".join(out)

    def _bash(self, script: str, cwd: Path, env: dict, block: Block) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, (
            f"{block.doc} '{block.label}' failed in {cwd.name} (exit {proc.returncode}):\n{script}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
        return proc.stdout

    def _background(self, line: str, cwd: Path, env: dict) -> None:
        log = cwd / "process.log"
        proc = subprocess.Popen(["bash", "-c", "exec " + line], cwd=cwd, env=env, stdout=open(log, "ab"), stderr=-2)
        self.procs.append(proc)
        self.starting.append((line, proc, log))

    def wait_started(self) -> None:
        """Every process started by the last step says it is up (the nodes start in parallel, like machines)."""
        deadline = time.time() + 90
        for line, proc, log in self.starting:
            while not re.search(r"listening on port|dialing", log.read_text(errors="replace")):
                assert proc.poll() is None, f"{line} exited with {proc.returncode}:\n{log.read_text()}"
                assert time.time() < deadline, f"{line} did not come up:\n{log.read_text()}"
                time.sleep(0.1)
        self.starting.clear()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick(all_blocks: list[Block], doc: str, party: str, label_start: str) -> Block:
    matches = [b for b in all_blocks if b.doc == doc and b.party == party and b.label.startswith(label_start)]
    assert len(matches) == 1, f"{doc}: expected one '# {party}: {label_start}...' block, found {len(matches)}"
    return matches[0]


def test_the_two_guides_followed_literally_run_a_job_to_a_verified_audit(tmp_path):
    t0 = time.time()
    docs = blocks("install-node.md") + blocks("run-consortium.md")
    node_doc, rc_doc = "install-node.md", "run-consortium.md"
    w = Walkthrough(tmp_path)

    def step(doc: str, party: str, label: str, per_node: bool = False) -> list[str]:
        block = _pick(docs, doc, party, label)
        outputs = [w.run(block, n) for n in NODES] if per_node else [w.run(block)]
        w.wait_started()
        return outputs

    try:
        step(rc_doc, "coordinator", "create the CA")
        step(node_doc, "node", "create the key", per_node=True)
        for i, node in enumerate(NODES):  # each institution's own data file, where the page says to put it
            synthetic_cohort(w.dirs[node] / "data.csv", seed=i)
        step(rc_doc, "coordinator", "sign the CSR", per_node=True)
        step(rc_doc, "coordinator", "write the consortium policy")
        step(rc_doc, "aggregator", "configure it")
        step(rc_doc, "aggregator", "start it")
        assert "SERVING" in step(rc_doc, "aggregator", "probe it")[0]
        for out in step(node_doc, "node", "check everything", per_node=True):
            assert "this node is ready" in out, out
        step(node_doc, "custodian", "create the consortium's HE key")
        step(node_doc, "node", "run it in the foreground", per_node=True)
        step(rc_doc, "coordinator", "your connection")
        checked = step(rc_doc, "coordinator", "write a job spec")[0]
        assert "5 training rounds + 1 statistics round" in checked and "would be accepted" in checked, checked
        out = step(rc_doc, "coordinator", "submit it")[0]
        job_id = (w.dirs["coordinator"] / "job-id.txt").read_text().strip()
        assert job_id in out and "completed" in out, out
        for out in step(node_doc, "node", "is it alive", per_node=True):
            assert out.startswith("healthy"), out
        audit = step(rc_doc, "coordinator", "collect every party's audit log")[0]
        assert "verified" in audit and "FAILED" not in audit and "NOT VERIFIED" not in audit, audit
        assert (w.dirs["coordinator"] / "report.html").exists()
        for node in NODES:  # where the docs say the trained model lands
            assert (w.dirs[node] / "state" / "jobs" / job_id / "final_model.npz").exists()
    finally:
        w.stop()
    # every block of both pages was run, except the ones the convention says are not part of a first run
    skipped = {"settings", "root", "coordinator (when needed)"}
    expected = {f"{b.doc}: {b.party}: {b.label}" for b in docs if b.party not in skipped}
    assert expected == set(w.ran), expected ^ set(w.ran)
    print(f"walkthrough: {time.time() - t0:.0f} s")  # measured 53 s at load ~8, 105-150 s at ~19: not asserted
