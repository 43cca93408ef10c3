"""``cipherfed job``: submit, watch, list and abort training jobs (coordinator), read status (auditor)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cipherfed.admin import connect, status_table
from protocol import cipherfed_pb2 as pb
from protocol.jobspec import parse_job_spec
from protocol.vocabulary import TERMINAL_JOB_STATUSES, JobStatus

TERMINAL = TERMINAL_JOB_STATUSES


def register(sub: Any) -> None:
    job = sub.add_parser("job", help="training jobs (coordinator)")
    cmds = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    def client(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, required=True, help="admin.toml (aggregator address and TLS files)")

    submit = cmds.add_parser("submit", help="validate a job spec locally, then submit it")
    submit.add_argument("spec", type=Path)
    submit.add_argument("--watch", action="store_true", help="show live progress until the job ends")
    client(submit)
    submit.set_defaults(handler=_submit)

    status = cmds.add_parser("status", help="per-round status: contributors, bytes, wall time, metrics")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true")
    client(status)
    status.set_defaults(handler=_status)

    watch = cmds.add_parser("watch", help="live per-round table until the job ends")
    watch.add_argument("job_id")
    client(watch)
    watch.set_defaults(handler=_watch)

    lst = cmds.add_parser("list", help="all jobs")
    client(lst)
    lst.set_defaults(handler=_list)

    abort = cmds.add_parser("abort", help="stop a running job")
    abort.add_argument("job_id")
    abort.add_argument("--reason", default="")
    client(abort)
    abort.set_defaults(handler=_abort)

    predict = cmds.add_parser(
        "predict", help="joint scores for aligned entities of a vertical job (at the active party)"
    )
    predict.add_argument("job_id")
    predict.add_argument("--ids", type=Path, required=True, help="one entity id per line")
    predict.add_argument("--config", type=Path, required=True, help="the active party's node.toml")
    predict.add_argument("--out", type=Path, default=None, help="CSV of id,score (default: print)")
    predict.set_defaults(handler=_predict)

    validate = cmds.add_parser("validate", help="check a job spec file (no connection)")
    validate.add_argument("spec", type=Path)
    validate.set_defaults(handler=_validate)


def _rpc_error(exc: grpc.RpcError) -> int:
    print(f"cipherfed: the aggregator refused: {exc.code().name}: {exc.details()}")
    return 1


def _validate(args: argparse.Namespace) -> int:
    spec = parse_job_spec(args.spec.read_text(), str(args.spec))
    print(f"{args.spec}: valid ({spec.partition}, {spec.rounds_description}, he_profile {spec.he_profile})")
    return 0


def _submit(args: argparse.Namespace) -> int:
    text = args.spec.read_text()
    parse_job_spec(text, str(args.spec))  # field-level errors before anything is sent
    stub = connect(args.config)
    try:
        ref = stub.SubmitJob(pb.SubmitJobRequest(spec_toml=text), timeout=30)
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    print(ref.job_id)
    if args.watch:
        return watch_job(stub, ref.job_id)
    return 0


def watch_job(stub: Any, job_id: str, poll_s: float = 0.5, console: Console | None = None) -> int:
    console = console or Console()
    with Live(Table(), console=console, refresh_per_second=4) as live:
        while True:
            status = stub.GetJobStatus(pb.JobRef(job_id=job_id), timeout=30)
            live.update(status_table(status))
            if status.status in TERMINAL:
                break
            time.sleep(poll_s)
    return 0 if status.status == JobStatus.COMPLETED else 1


def _status(args: argparse.Namespace) -> int:
    stub = connect(args.config)
    try:
        status = stub.GetJobStatus(pb.JobRef(job_id=args.job_id), timeout=30)
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    if args.json:
        print(json.dumps(MessageToDict(status, preserving_proto_field_name=True), indent=2))
    else:
        Console().print(status_table(status))
    return 0


def _watch(args: argparse.Namespace) -> int:
    stub = connect(args.config)
    try:
        return watch_job(stub, args.job_id)
    except grpc.RpcError as exc:
        return _rpc_error(exc)


def _list(args: argparse.Namespace) -> int:
    stub = connect(args.config)
    try:
        jobs = stub.ListJobs(pb.ListJobsRequest(), timeout=30)
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    table = Table(title="jobs", title_justify="left")
    widest = max((len(j.job_id) for j in jobs.jobs), default=3)
    table.add_column("job", no_wrap=True, min_width=widest)  # an id is copied into other commands: never cut
    for column in ("name", "status", "round", "created (UTC)"):
        table.add_column(column, overflow="fold")
    for j in jobs.jobs:
        table.add_row(j.job_id, j.name, j.status, f"{j.current_round + 1}/{j.rounds_total}", j.created)
    Console().print(table)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from silo_node.config import load_node_config
    from silo_node.vertical import VerticalError
    from silo_node.vertical_predict import predict, read_ids

    try:
        scores = predict(load_node_config(args.config), args.job_id, read_ids(args.ids))
    except VerticalError as exc:
        print(f"cipherfed: {exc}")
        return 1
    lines = ["id,score"] + [f"{i},{s:.6f}" for i, s in scores]
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"{len(scores)} scores written to {args.out}")
    else:
        print("\n".join(lines))
    return 0


def _abort(args: argparse.Namespace) -> int:
    stub = connect(args.config)
    try:
        ack = stub.AbortJob(pb.AbortJobRequest(job_id=args.job_id, reason=args.reason), timeout=30)
    except grpc.RpcError as exc:
        return _rpc_error(exc)
    print(ack.message)
    return 0
