"""The ``datamcp`` command: client verbs over the SDK.

``datamcp agent|task|events|pipeline|memory|health|version``; the server
distribution adds ``serve``, ``db``, ``lambda-local`` and ``auth`` through
:func:`main`'s ``extend`` hook. Global options go before or after the verb:
``--address`` (env ``DATAMCP_ADDRESS``), ``--api-key``, ``--token``, TLS
flags, ``--output table|json``.

Exit codes: 0 done; 1 the task, run or sync failed (or the server is not
serving); 2 bad usage or a request the server refused; 3 not found;
4 conflict or precondition; 5 authentication or permission; 6 server
unreachable, overloaded or too slow; 7 server error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from datamcp_client.cli import _events, _health, _memory, _pipelines, _tasks
from datamcp_client.cli._common import ExitCode, connection_options, run

VERSION = "0.1.0"

Extension = Callable[[Any], None]
"""Adds sub-commands to the ``datamcp`` parser (the server's serve, db, ...)."""


def build_parser(extend: Extension | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datamcp",
        description="The DataMCP mesh from the command line: tasks, events, pipelines, "
        "memory and health of a running server.",
        epilog="Exit codes: 0 done, 1 failed (task/run/sync/health), 2 usage or refused "
        "request, 3 not found, 4 conflict, 5 auth, 6 unavailable, 7 server error, "
        "130 interrupted. `datamcp VERB --help` for each verb.",
    )
    connection_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _tasks.add_parsers(sub)
    _events.add_parsers(sub)
    _pipelines.add_parsers(sub)
    _memory.add_parsers(sub)
    _health.add_parsers(sub)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(f"datamcp {VERSION}") or 0)
    if extend is not None:
        extend(sub)
    return parser


def _quiet_broken_pipe() -> None:
    # The reader went away (`datamcp ... | head`): stop writing, without a
    # traceback, and keep the interpreter from failing its final flush.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None, *, extend: Extension | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser(extend).parse_args(argv)
    try:
        if getattr(args, "handler", None) is not None:
            try:
                import rich  # noqa: F401
            except ImportError:
                print(
                    "datamcp: the command line needs rich: pip install 'datamcp-client[cli]'",
                    file=sys.stderr,
                )
                return ExitCode.USAGE
            return run(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        _quiet_broken_pipe()
        return ExitCode.OK


def entry() -> None:
    sys.exit(main())


__all__ = ["ExitCode", "build_parser", "main"]
