"""``datamcp health``: the server's health report (exit 0 when it serves, 1 otherwise)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from datamcp_client.cli._common import ExitCode, Output, add_verb

if TYPE_CHECKING:
    from datamcp_client import Client, HealthReport


def _render(out: Output, report: HealthReport) -> None:
    if out.json:
        out.write_json(report)
        return
    print(
        f"overall: {report.status}   version {report.version}   uptime {report.uptime:.0f}s",
        flush=True,
    )
    rows = [
        {
            "component": c.name + (" *" if c.critical else ""),
            "status": c.status,
            "latency": f"{c.latency * 1000:.1f}ms",
            "details": c.details,
        }
        for c in report.components
    ]
    out.many(rows, ("component", "status", "latency", "details"))
    serving = ", ".join(
        f"{name or '(server)'}={'SERVING' if ok else 'NOT_SERVING'}"
        for name, ok in sorted(report.serving.items())
    )
    print(f"services: {serving}\n(* critical component)", flush=True)


async def _health(args: argparse.Namespace, client: Client, out: Output) -> int:
    if not args.watch:
        report = await client.health.report(refresh=args.refresh)
        _render(out, report)
        return ExitCode.OK if report.ok else ExitCode.FAILED
    from datamcp_client.errors import UnavailableError  # grpc: not on --help's path

    last = None
    try:
        async for last in client.health.watch():
            _render(out, last)
    except UnavailableError as exc:
        # The server ends the stream when it stops, after its final report:
        # the watch is over; the exit code follows that report.
        if exc.reason != "SERVER_SHUTTING_DOWN" or last is None:
            raise
    return ExitCode.OK if last is not None and last.ok else ExitCode.FAILED


def add_parsers(sub: Any) -> None:
    p = add_verb(
        sub,
        "health",
        _health,
        "show the server's health (exit 0 when it serves, 1 otherwise: usable as a probe)",
    )
    p.add_argument("--watch", action="store_true", help="print every change until interrupted")
    p.add_argument("--refresh", action="store_true", help="run every check now")
    p.add_argument(
        "--timeout", dest="call_timeout", type=float, default=None, help="seconds to wait"
    )
    # Spellings of earlier versions.
    p.add_argument("--target", dest="address", help=argparse.SUPPRESS)
    p.add_argument(
        "--json", dest="output", action="store_const", const="json", help=argparse.SUPPRESS
    )
