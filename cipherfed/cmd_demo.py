"""``cipherfed demo``: a whole consortium on this machine."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run a whole encrypted consortium on this machine")
    demo.add_argument("--silos", type=int, default=3)
    demo.add_argument("--rounds", type=int, default=None, help="training rounds (default: per dataset)")
    demo.add_argument("--dataset", choices=["breast_cancer", "digits"], default="breast_cancer")
    demo.add_argument(
        "--partition",
        choices=["horizontal", "vertical"],
        default="horizontal",
        help="vertical: hospital, lab and imaging centre hold different columns of the same patients",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="kept afterwards: certificates, configs, logs, SQLite, models (default: a new temp dir)",
    )
    demo.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    demo.add_argument(
        "--dp-epsilon",
        type=float,
        default=None,
        help="also train with record-level differential privacy (DP-SGD) at this epsilon, delta 1e-5",
    )
    demo.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve the aggregator's Prometheus metrics here during the demo (e.g. 127.0.0.1:9464)",
    )
    demo.add_argument(
        "--he-profile",
        choices=["sum", "compact"],
        default="sum",
        help="compact: quantized integer lanes (bits, bound, weight cap in the job spec; local scaling)",
    )
    demo.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from cipherfed.demo import run_demo

    if args.silos < 2:
        raise ValueError("--silos must be at least 2 (no aggregate is released with one contributor)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cipherfed-demo-"))
    if args.partition == "vertical":
        from cipherfed.demo_vertical import run_vertical_demo

        run_vertical_demo(workdir, args.rounds, args.json)
        return 0
    run_demo(
        workdir,
        args.silos,
        args.rounds,
        args.dataset,
        args.json,
        dp_epsilon=args.dp_epsilon,
        metrics_listen=args.metrics_listen,
        he_profile=args.he_profile,
    )
    return 0
