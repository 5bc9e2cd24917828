"""``datamcp agent ...`` and ``datamcp task ...``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from datamcp_client.cli._common import ExitCode, Output, add_verb, read_json

if TYPE_CHECKING:
    from datamcp_client import Client, Task

TASK_FIELDS = (
    "id",
    "capability",
    "state",
    "result",
    "error",
    "agent_id",
    "attempts",
    "input",
    "request_id",
    "correlation_id",
    "create_time",
    "end_time",
)
TASK_COLUMNS = ("id", "capability", "state", "agent_id", "attempts", "create_time")


def _task_exit(task: Task) -> int:
    return ExitCode.OK if task.succeeded else ExitCode.FAILED


def _show_task(out: Output, task: Task, quiet: bool = False) -> None:
    if quiet:
        print(task.id)
    else:
        out.one(task, TASK_FIELDS)


async def _agents(args: argparse.Namespace, client: Client, out: Output) -> int:
    agents = await client.agents.list(args.capability)
    rows = [
        {
            "id": a.id,
            "kind": a.kind,
            "status": a.status,
            "load": f"{a.load}/{a.max_concurrency}",
            "capabilities": ", ".join(c.name for c in a.capabilities),
        }
        for a in agents
    ]
    out.many(agents if out.json else rows, ("id", "kind", "status", "load", "capabilities"))
    return ExitCode.OK


def _spec_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "timeout": args.timeout,
        "priority": args.priority,
        "request_id": args.request_id,
        "agent_id": args.agent_id or "",
    }


async def _exec(args: argparse.Namespace, client: Client, out: Output) -> int:
    task = await client.agents.execute(
        args.capability, read_json(args.input, "--input"), **_spec_kwargs(args)
    )
    _show_task(out, task)
    return _task_exit(task)


async def _submit(args: argparse.Namespace, client: Client, out: Output) -> int:
    task = await client.agents.submit(
        args.capability, read_json(args.input, "--input"), queued=args.queued, **_spec_kwargs(args)
    )
    _show_task(out, task, args.quiet)
    return ExitCode.OK


async def _get(args: argparse.Namespace, client: Client, out: Output) -> int:
    _show_task(out, await client.agents.get_task(args.id))
    return ExitCode.OK


async def _watch(args: argparse.Namespace, client: Client, out: Output) -> int:
    last = None
    async for last in client.agents.watch(args.id):
        progress = f" {last.progress_percent:.0f}% {last.progress_message}".rstrip()
        out.line(last, f"{last.state.name}{progress if last.state.name == 'RUNNING' else ''}")
    if last is None:
        last = await client.agents.get_task(args.id)
    if not out.json:
        _show_task(out, last)
    return _task_exit(last)


async def _list(args: argparse.Namespace, client: Client, out: Output) -> int:
    tasks = [
        t
        async for t in client.agents.tasks(
            states=args.state or (), capability=args.capability or "", limit=args.limit
        )
    ]
    out.many(tasks, TASK_COLUMNS)
    return ExitCode.OK


async def _cancel(args: argparse.Namespace, client: Client, out: Output) -> int:
    _show_task(out, await client.agents.cancel(args.id))
    return ExitCode.OK


def _task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("capability", help="what to run, for example echo")
    p.add_argument("--input", "-i", help="JSON input, @FILE or - for stdin")
    p.add_argument("--timeout", type=float, help="seconds the task may take (server default)")
    p.add_argument("--priority", type=int, default=0, help="-100..100, higher runs first")
    p.add_argument("--request-id", help="idempotency key: the same key returns the same task")
    p.add_argument("--agent-id", help="run on this agent instead of routing by capability")


def add_parsers(sub: Any) -> None:
    agent = sub.add_parser("agent", help="agents hosted by the server")
    agent_sub = agent.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add_verb(agent_sub, "list", _agents, "list agents with their load and capabilities")
    p.add_argument("--capability", default="", help="only agents offering this capability")

    task = sub.add_parser("task", help="run, submit, follow and cancel tasks")
    task_sub = task.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add_verb(
        task_sub,
        "exec",
        _exec,
        "run a task and wait for its end (exit 0 when it succeeded, 1 otherwise)",
    )
    _task_options(p)
    p = add_verb(task_sub, "submit", _submit, "store a task and return at once")
    _task_options(p)
    p.add_argument("--queued", action="store_true", help="send it to the server's task queue")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the task id")
    p = add_verb(task_sub, "get", _get, "show a task")
    p.add_argument("id")
    p = add_verb(
        task_sub,
        "watch",
        _watch,
        "follow a task to its end (exit 0 when it succeeded, 1 otherwise)",
    )
    p.add_argument("id")
    p = add_verb(task_sub, "list", _list, "list tasks, newest first")
    p.add_argument("--state", action="append", help="only this state (repeatable), e.g. failed")
    p.add_argument("--capability", help="only this capability")
    p.add_argument("--limit", type=int, default=50, help="most tasks shown (default 50)")
    p = add_verb(task_sub, "cancel", _cancel, "cancel a task")
    p.add_argument("id")
