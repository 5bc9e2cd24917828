"""``datamcp pipeline ...``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from datamcp_client.cli._common import ExitCode, Output, add_verb, key_values, read_text
from datamcp_client.cli._progress import follow

if TYPE_CHECKING:
    from datamcp_client import Client, Run

RUN_FIELDS = (
    "id",
    "pipeline_name",
    "state",
    "rows_read",
    "rows_written",
    "rows_rejected",
    "error_reason",
    "error_message",
    "trigger",
    "attempts",
    "create_time",
    "end_time",
)
RUN_COLUMNS = (
    "id",
    "pipeline_name",
    "state",
    "rows_read",
    "rows_written",
    "rows_rejected",
    "create_time",
)


def _run_exit(run: Run) -> int:
    return ExitCode.OK if run.state.name == "SUCCEEDED" else ExitCode.FAILED


async def _validate(args: argparse.Namespace, client: Client, out: Output) -> int:
    result = await client.pipelines.validate(
        read_text(args.file, "FILE"), preview_rows=args.preview
    )
    if out.json:
        out.write_json(result)
    elif result.valid:
        print(f"{args.file}: valid")
        if result.preview_rows:
            out.many(result.preview_rows, result.columns)
    else:
        for p in result.problems:
            print(f"{p.field}: {p.description}")
    return ExitCode.OK if result.valid else ExitCode.FAILED


async def _create(args: argparse.Namespace, client: Client, out: Output) -> int:
    text = read_text(args.file, "FILE")
    if args.replace:
        from datamcp_client import NotFoundError

        try:
            current = await client.pipelines.get(args.replace)
        except NotFoundError:
            pipeline = await client.pipelines.create(text)
        else:
            pipeline = await client.pipelines.update(current.id, text)
    else:
        pipeline = await client.pipelines.create(text)
    out.one(pipeline, ("id", "name", "version", "schedule", "create_time", "update_time"))
    return ExitCode.OK


async def _list(args: argparse.Namespace, client: Client, out: Output) -> int:
    items = [p async for p in client.pipelines.list()]
    out.many(items, ("id", "name", "version", "schedule", "next_run_time"))
    return ExitCode.OK


async def _run(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = await client.pipelines.run(
        args.name,
        params=key_values(args.param or (), "--param", as_json=True),
        request_id=args.request_id,
    )
    if not args.follow:
        if args.quiet:
            print(run.id)
        else:
            out.one(run, RUN_FIELDS)
        return ExitCode.OK
    last = await follow(
        out,
        client.pipelines.watch_run(run.id),
        title=f"{run.pipeline_name} {run.id[:8]}",
        state=lambda r: r.state.name,
        counters=lambda r: (
            f"read {r.rows_read:,}  written {r.rows_written:,}  rejected {r.rows_rejected:,}"
        ),
    )
    final = await client.pipelines.get_run(run.id) if last is None or not last.done else last
    if not out.json:
        out.one(final, RUN_FIELDS)
    return _run_exit(final)


async def _runs(args: argparse.Namespace, client: Client, out: Output) -> int:
    runs = [
        r
        async for r in client.pipelines.runs(
            pipeline=args.pipeline or "", states=args.state or (), limit=args.limit
        )
    ]
    out.many(runs, RUN_COLUMNS)
    return ExitCode.OK


async def _get_run(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = await client.pipelines.get_run(args.id)
    out.one(run, (*RUN_FIELDS, "stages"))
    return ExitCode.OK


async def _cancel(args: argparse.Namespace, client: Client, out: Output) -> int:
    out.one(await client.pipelines.cancel_run(args.id), RUN_FIELDS)
    return ExitCode.OK


async def _rejects(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = await client.pipelines.get_run(args.id, reject_limit=args.limit)
    out.many(run.rejects, ("row_number", "stage", "reason", "row"))
    return ExitCode.OK


def add_parsers(sub: Any) -> None:
    pipeline = sub.add_parser("pipeline", help="validate, create, run and follow pipelines")
    ps = pipeline.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add_verb(
        ps,
        "validate",
        _validate,
        "check a pipeline file against the server's configuration (exit 1 when invalid)",
    )
    p.add_argument("file", help="YAML or JSON spec (- for stdin)")
    p.add_argument("--preview", type=int, default=0, metavar="N", help="show the first N rows")
    p = add_verb(ps, "create", _create, "store a pipeline from a YAML or JSON file")
    p.add_argument("file", help="YAML or JSON spec (- for stdin)")
    p.add_argument(
        "--replace", metavar="NAME", help="update the pipeline NAME if it exists, else create it"
    )
    add_verb(ps, "list", _list, "list pipelines")
    p = add_verb(
        ps,
        "run",
        _run,
        "start a run; with --follow show its progress and exit 0 only if it succeeded",
    )
    p.add_argument("name", help="pipeline name or id")
    p.add_argument("--param", "-p", action="append", help="run parameter KEY=VALUE (repeatable)")
    p.add_argument("--request-id", help="idempotency key: the same key returns the same run")
    p.add_argument("--follow", "-f", action="store_true", help="follow the run to its end")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the run id")
    p = add_verb(ps, "runs", _runs, "list runs, newest first")
    p.add_argument("pipeline", nargs="?", help="only runs of this pipeline")
    p.add_argument("--state", action="append", help="only this state (repeatable)")
    p.add_argument("--limit", type=int, default=50)
    p = add_verb(ps, "run-info", _get_run, "show a run with its per-stage counters")
    p.add_argument("id")
    p = add_verb(ps, "cancel", _cancel, "cancel a run")
    p.add_argument("id", help="run id")
    p = add_verb(ps, "rejects", _rejects, "show the rows a run rejected, with reasons")
    p.add_argument("id", help="run id")
    p.add_argument("--limit", type=int, default=20)
