"""Which functions of this repository one update passes through, counted by running it, not by reading.

``docs/architecture.md`` names the path of one horizontal update (silo -> aggregator -> silo) by hand.
This script counts it mechanically, the same way for any checkout, so two commits can be compared:

1. It runs the checkout's own ``cipherfed demo --silos 2 --rounds 1`` (real processes, real mTLS gRPC,
   profile ``sum``), with a ``sitecustomize`` that installs a profiler in every process it starts.
2. The profiler opens a *window* when one of four functions is entered, and records every distinct
   function of the checkout's packages (``aggregator``, ``silo_node``, ``crypto``, ``protocol``,
   ``policies``, ``audit``) called on that thread, or on a thread started inside the window (grpc
   consumes a client stream's generator on one), until the window's function returns:

   - silo out: ``HorizontalJob._upload`` (train, encrypt, sign, send);
   - aggregator: ``ConsortiumService.Upload`` (verify, add, and for the last upload close and release)
     and ``ConsortiumService.DownloadAggregate``;
   - silo back: ``HorizontalJob._apply_aggregate`` (download, verify, decrypt, keep).

3. It keeps the windows of the HE job's first training round and prints, per side, the distinct
   functions (in the order first called), how many there are and in how many modules.

Everything is counted: checks, helpers and model training included; comprehensions, lambdas, module
and class bodies and generated code (dataclass ``__init__``) are not, nor anything outside the six
packages. A run in which the profiler failed to read a call, or missed a side of the round, stops with
an error instead of printing a shorter count. So the numbers are
larger than the page's, which follows only the update itself, but they mean the same thing at every
commit. Run ``python -m benchmarks.update_path --repo DIR`` once per checkout (a ``git worktree`` of
the older commit, with this checkout's ``.venv``), then compare the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

PACKAGES = ("aggregator", "silo_node", "crypto", "protocol", "policies", "audit")
ROLES = ("aggregator", "silo_node")
SIDES = ("silo_out", "aggregator", "silo_back")
SIDE_OF_WINDOW = {"silo_out": "silo_out", "upload": "aggregator", "download": "aggregator", "silo_back": "silo_back"}
SILOS = 2

# Installed as sitecustomize.py in every process of the run; standalone, because the checkout measured may
# be an old commit that has no copy of this file.
TRACER = r"""
import json, os, sys, threading, time

_OUT = os.environ.get("CIPHERFED_CALL_TRACE")
if _OUT:
    _ROOT = os.environ["CIPHERFED_CALL_TRACE_ROOT"].rstrip("/") + "/"
    _PACKAGES = tuple(_ROOT + p + "/" for p in %(packages)r)
    _WINDOWS = {
        ("silo_node/horizontal.py", "HorizontalJob._upload"): "silo_out",
        ("silo_node/horizontal.py", "HorizontalJob._apply_aggregate"): "silo_back",
        ("aggregator/", "ConsortiumService.Upload"): "upload",
        ("aggregator/", "ConsortiumService.DownloadAggregate"): "download",
    }
    _SKIP = ("<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>", "<lambda>")
    _CO_OPTIMIZED = 1  # set on function code; module and class bodies lack it
    _open = {}  # thread id -> [window, frame, meta, seen, start, still open]
    _lock = threading.Lock()
    _path = os.path.join(_OUT, f"{os.getpid()}.jsonl")

    def _write(line):
        with _lock, open(_path, "a") as out:
            out.write(json.dumps(line) + "\n")

    _start = threading.Thread.start

    def _start_inside_window(thread):
        # A thread started inside a window works for it (grpc consumes a client stream's request
        # generator on a thread of its own): what it calls counts while the window is open.
        thread._cipherfed_window = _open.get(threading.get_ident())
        return _start(thread)

    threading.Thread.start = _start_inside_window

    def _meta(kind, frame):
        local = frame.f_locals
        if kind in ("silo_out", "silo_back"):
            job = local["self"]
            r = int(local["round_index"])
            stats = bool(getattr(job.spec, "stats_round", False)) and r == 0
            return {"job": job.job_id, "round": r, "profile": job.spec.he_profile, "train": not stats}
        if kind == "download":
            request = local["request"]
            return {"job": request.job_id, "round": int(request.round)}
        return {}

    def _header_meta(frame):
        for value in frame.f_locals.values():
            if type(value).__name__ == "UploadHeader":
                return {"job": value.job_id, "round": int(value.round), "profile": value.manifest.profile}
        return None

    def _profile(frame, event, arg):
        try:
            if event != "call" and event != "return":
                return
            code = frame.f_code
            state = _open.get(threading.get_ident())
            if event == "return":
                if state is not None and frame is state[1]:
                    del _open[threading.get_ident()]
                    state[5] = False
                    _write({"window": state[0], "meta": state[2], "start": state[4], "end": time.time(),
                            "functions": list(state[3])})
                return
            filename = code.co_filename
            if not filename.startswith(_PACKAGES) or not code.co_flags & _CO_OPTIMIZED:
                return
            relative = filename[len(_ROOT):]
            if state is None:
                for (where, qualname), kind in _WINDOWS.items():
                    if code.co_qualname == qualname and relative.startswith(where):
                        _open[threading.get_ident()] = [kind, frame, _meta(kind, frame), {}, time.time(), True]
                        return
                state = getattr(threading.current_thread(), "_cipherfed_window", None)
                if state is None or not state[5]:
                    return
            if state[0] == "upload" and not state[2]:
                state[2] = _header_meta(frame) or {}
            if not any(s in code.co_qualname for s in _SKIP):
                state[3].setdefault(relative[:-3].replace("/", ".") + ":" + code.co_qualname, None)
        except Exception as exc:  # recorded, so that a window that could not be read fails the run
            try:
                _write({"error": f"{type(exc).__name__}: {exc}", "in": frame.f_code.co_qualname})
            except Exception:
                pass

    sys.setprofile(_profile)
    threading.setprofile(_profile)
"""


def run_traced(repo: Path, python: Path, workdir: Path) -> list[dict[str, Any]]:
    """Run the checkout's demo with the tracer in every process; the windows it recorded."""
    tracer_dir, out_dir = workdir / "tracer", workdir / "windows"
    tracer_dir.mkdir(parents=True)
    out_dir.mkdir()
    (tracer_dir / "sitecustomize.py").write_text(TRACER % {"packages": PACKAGES})
    env = {
        **os.environ,
        "PYTHONPATH": f"{tracer_dir}{os.pathsep}{repo}",
        "CIPHERFED_CALL_TRACE": str(out_dir),
        "CIPHERFED_CALL_TRACE_ROOT": str(repo.resolve()),
    }
    demo = [
        str(python),
        "-m",
        "cipherfed",
        "demo",
        "--silos",
        str(SILOS),
        "--rounds",
        "1",
        "--workdir",
        str(workdir / "demo"),
    ]
    done = subprocess.run(demo, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(
            f"the demo of {repo} failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    lines = []
    for path in out_dir.glob("*.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    errors = sorted({f"{line['in']}: {line['error']}" for line in lines if "error" in line})
    if errors:
        raise SystemExit(f"the profiler could not read {len(errors)} call(s) in {repo}:\n" + "\n".join(errors[:10]))
    return lines


def first_training_round(windows: list[dict[str, Any]]) -> tuple[str, int]:
    """The HE (``sum``) job's first training round, as the silos' upload windows name it (the earliest)."""
    uploads = sorted(
        (w["start"], w["meta"]["job"], w["meta"]["round"])
        for w in windows
        if w["window"] == "silo_out" and w["meta"].get("profile") == "sum" and w["meta"].get("train")
    )
    if not uploads:
        raise SystemExit("no upload of a training round of the HE job was recorded")
    return uploads[0][1], uploads[0][2]


def round_windows(windows: list[dict[str, Any]], job: str, round_index: int, silos: int) -> list[dict[str, Any]]:
    """That round's windows, oldest first; every side must have been seen, or the count would look short."""
    chosen = [w for w in windows if w["meta"].get("job") == job and w["meta"].get("round") == round_index]
    seen = {kind: sum(w["window"] == kind for w in chosen) for kind in SIDE_OF_WINDOW}
    if min(seen.values()) < silos:
        raise SystemExit(f"round {round_index} of {job}: expected {silos} windows of each kind, saw {seen}")
    return sorted(chosen, key=lambda w: w["start"])


def path_of(windows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per side, the distinct functions of ``windows``, in the order first called."""
    sides: dict[str, dict[str, None]] = defaultdict(dict)
    for window in windows:
        for name in window["functions"]:
            sides[SIDE_OF_WINDOW[window["window"]]].setdefault(name, None)
    return {side: list(sides[side]) for side in SIDES}


def summary(functions: list[str]) -> dict[str, Any]:
    modules = {name.split(":")[0] for name in functions}
    roles = [name for name in functions if name.split(".")[0] in ROLES]
    return {
        "functions": len(functions),
        "modules": len(modules),
        "role_functions": len(roles),
        "library_functions": len(functions) - len(roles),
        "names": functions,
    }


def measure(repo: Path, python: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cipherfed-update-path-") as tmp:
        windows = run_traced(repo, python, Path(tmp))
    job, round_index = first_training_round(windows)
    chosen = round_windows(windows, job, round_index, silos=SILOS)
    sides = {side: summary(names) for side, names in path_of(chosen).items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    total = sum(side["functions"] for side in sides.values())
    return {
        "repo": str(repo),
        "commit": commit.stdout.strip(),
        "job": job,
        "round": round_index,
        "total": total,
        **sides,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repo", type=Path, action="append", help="a checkout to measure (repeatable; default: this one)"
    )
    parser.add_argument("--python", type=Path, default=Path(sys.executable), help="the interpreter with the deps")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--names", action="store_true", help="list every function, not only the counts")
    args = parser.parse_args(argv)
    repos = args.repo or [Path(__file__).resolve().parent.parent]
    results = [measure(repo.resolve(), args.python) for repo in repos]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.names:
        for result in results:
            for side in SIDES:
                del result[side]["names"]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
