"""``cipherfed demo``: a whole consortium on this machine."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run a whole encrypted consortium on this machine")
    demo.add_argument("--silos", type=int, default=None, help="hospitals (default 3; 4 with --drop-silo)")
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
        default=None,
        help="default sum (compact with --secure-aggregation); compact: quantized integer lanes (bits, bound, "
        "weight cap in the job spec; local scaling)",
    )
    demo.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="mask each silo's update (SecAgg over the compact profile; implies --he-profile compact, >= 3 silos)",
    )
    demo.add_argument(
        "--drop-silo",
        default=None,
        metavar="NAME",
        help="with --secure-aggregation: this silo (e.g. hospital-4) stops after mask agreement in --drop-round, "
        "then restarts and rejoins; needs >= 4 silos",
    )
    demo.add_argument(
        "--drop-round", type=int, default=None, metavar="R", help="the round (from 0) --drop-silo drops out of"
    )
    demo.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from cipherfed.demo import run_demo

    if args.silos is None:
        args.silos = 4 if args.drop_silo is not None else 3
    if args.silos < 2:
        raise ValueError("--silos must be at least 2 (no aggregate is released with one contributor)")
    if (args.drop_silo is not None or args.drop_round is not None) and not args.secure_aggregation:
        raise ValueError(
            "--drop-silo/--drop-round: need --secure-aggregation (the fault is a secure-aggregation dropout)"
        )
    if args.secure_aggregation:
        if args.partition == "vertical":
            raise ValueError("--secure-aggregation is for horizontal jobs (it masks the compact profile's lanes)")
        if args.he_profile == "sum":
            raise ValueError("--secure-aggregation masks the compact profile's lanes: drop --he-profile sum")
        args.he_profile = "compact"  # the masks are one-time pads over the compact profile's integer lanes
    args.he_profile = args.he_profile or "sum"
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
        secure_aggregation=args.secure_aggregation,
        drop_silo=args.drop_silo,
        drop_round=args.drop_round,
    )
    return 0
