"""What every client verb shares: global options, connecting, output, exit codes.

Nothing here imports grpc or protobuf at module level: ``datamcp --help``
builds the whole parser from these modules without loading the SDK.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datamcp_client import Client

DEFAULT_ADDRESS = "127.0.0.1:50051"


class ExitCode(enum.IntEnum):
    """What a ``datamcp`` client verb's exit status means."""

    OK = 0
    FAILED = 1  # the task, run or sync ended without success; health not serving
    USAGE = 2  # bad arguments or a request the server refused (INVALID_ARGUMENT)
    NOT_FOUND = 3
    CONFLICT = 4  # ALREADY_EXISTS, ABORTED, FAILED_PRECONDITION
    AUTH = 5  # UNAUTHENTICATED, PERMISSION_DENIED
    UNAVAILABLE = 6  # unreachable, overloaded, deadline exceeded: try again later
    INTERNAL = 7  # the server failed; quote the error id
    INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A bad argument found after parsing (unreadable file, bad JSON...)."""


Handler = Callable[[argparse.Namespace, "Client", "Output"], Awaitable[int]]


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """``DATAMCP_ADDRESS``, else where ``DATAMCP_LISTEN`` makes a local server
    listen (a wildcard host becomes 127.0.0.1), else 127.0.0.1:50051."""
    env = os.environ if environ is None else environ
    if env.get("DATAMCP_ADDRESS"):
        return env["DATAMCP_ADDRESS"]
    listen = env.get("DATAMCP_LISTEN", "")
    host, sep, port = listen.rpartition(":")
    if sep and port.isdigit() and port != "0":
        if host in ("", "0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"
        return f"{host}:{port}"
    return DEFAULT_ADDRESS


def connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The global options; on sub-commands (``defaults=False``) they only
    override what was given before the verb."""

    def d(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--address",
        default=d(None),
        metavar="HOST:PORT",
        help="server address (env DATAMCP_ADDRESS; default 127.0.0.1:50051)",
    )
    group.add_argument("--api-key", default=d(None), help="API key (env DATAMCP_API_KEY)")
    group.add_argument("--token", default=d(None), help="JWT bearer token (env DATAMCP_TOKEN)")
    group.add_argument(
        "--tls", action="store_true", default=d(False), help="use TLS with the system roots"
    )
    group.add_argument("--tls-ca", default=d(None), metavar="PEM", help="CA bundle (implies --tls)")
    group.add_argument("--tls-cert", default=d(None), metavar="PEM", help="client certificate")
    group.add_argument("--tls-key", default=d(None), metavar="PEM", help="client key")
    group.add_argument(
        "--tls-server-name", default=d(None), metavar="NAME", help="name to verify the server as"
    )
    group.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default=d("table"),
        help="table for people, json for scripts (one document, or one per line for streams)",
    )


def add_verb(
    sub: Any, name: str, handler: Handler, help: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A client verb: its parser, with the global options, running ``handler``."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, **kwargs)
    connection_options(parser, defaults=False)
    parser.set_defaults(handler=handler)
    return parser


def read_json(text: str | None, what: str) -> Any:
    """``--input '{"a": 1}'``, ``@file.json`` or ``-`` (stdin) as JSON data."""
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{what}: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what}: not JSON ({exc})") from None


def read_text(path: str, what: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what}: cannot read {path}: {exc}") from None


def key_values(items: Iterable[str], what: str, *, as_json: bool = False) -> dict[str, Any]:
    """``k=v`` pairs; values as JSON when they parse (``n=5`` -> 5), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what}: expected KEY=VALUE, got {item!r}")
        if as_json:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        else:
            out[key] = value
    return out


def plain(value: Any) -> Any:
    """SDK values as JSON data: dataclasses as objects, times as RFC 3339, enums by name."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return plain(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


class Output:
    """Writes results as rich tables (people) or JSON (scripts)."""

    def __init__(self, mode: str) -> None:
        self.json = mode == "json"
        self._console: Any = None

    @property
    def console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            width = None if sys.stdout.isatty() else 160
            self._console = Console(width=width, soft_wrap=False, highlight=False)
        return self._console

    def write_json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(plain(data), ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def one(self, item: Any, fields: Sequence[str] | None = None) -> None:
        """One object: a two-column table, or a JSON object."""
        data = plain(item)
        if self.json:
            self.write_json(data)
            return
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key in fields or list(data):
            if key in data and data[key] not in (None, "", [], {}):
                table.add_row(key, _cell(data[key]))
        self.console.print(table)

    def many(self, items: Iterable[Any], columns: Sequence[str]) -> int:
        """Objects as table rows (the given columns), or a JSON array."""
        rows = [plain(i) for i in items]
        if self.json:
            self.write_json(rows)
            return len(rows)
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column.upper().replace("_", " "), overflow="fold")
        for row in rows:
            table.add_row(*(_cell(row.get(c)) for c in columns))
        self.console.print(table)
        return len(rows)

    def line(self, item: Any, text: str) -> None:
        """One item of a stream: a JSON line, or ``text``."""
        if self.json:
            self.write_json(item)
        else:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def note(self, text: str) -> None:
        """A remark for people (stderr, so stdout stays the data)."""
        if not self.json:
            print(text, file=sys.stderr, flush=True)


def _tls(args: argparse.Namespace) -> Any:
    if not (args.tls or args.tls_ca or args.tls_cert):
        return False
    from datamcp_client import TLSConfig

    try:
        return TLSConfig.from_files(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    except OSError as exc:
        raise UsageError(f"TLS: cannot read {exc.filename}: {exc.strerror}") from None


async def connect(args: argparse.Namespace) -> Client:
    from datamcp_client import Client

    return await Client.connect(
        args.address or default_address(),
        api_key=args.api_key or os.environ.get("DATAMCP_API_KEY") or None,
        token=args.token or os.environ.get("DATAMCP_TOKEN") or None,
        tls=_tls(args),
        timeout=getattr(args, "call_timeout", None) or 30.0,
        connect_timeout=getattr(args, "call_timeout", None) or 10.0,
    )


def exit_code_of(error: BaseException) -> ExitCode:
    from datamcp_client import errors

    table: list[tuple[type[BaseException], ExitCode]] = [
        (errors.InvalidArgumentError, ExitCode.USAGE),
        (errors.NotFoundError, ExitCode.NOT_FOUND),
        (errors.AlreadyExistsError, ExitCode.CONFLICT),
        (errors.AbortedError, ExitCode.CONFLICT),
        (errors.FailedPreconditionError, ExitCode.CONFLICT),
        (errors.UnauthenticatedError, ExitCode.AUTH),
        (errors.PermissionDeniedError, ExitCode.AUTH),
        (errors.UnavailableError, ExitCode.UNAVAILABLE),
        (errors.ResourceExhaustedError, ExitCode.UNAVAILABLE),
        (errors.DeadlineExceededError, ExitCode.UNAVAILABLE),
        (errors.InternalError, ExitCode.INTERNAL),
    ]
    for cls, code in table:
        if isinstance(error, cls):
            return code
    return ExitCode.FAILED


async def _invoke(args: argparse.Namespace) -> int:
    out = Output(args.output)
    client = await connect(args)
    try:
        return int(await args.handler(args, client, out))
    finally:
        await client.close()


def run(args: argparse.Namespace) -> int:
    """Run a client verb: connect, call, print; typed errors become exit codes."""
    import asyncio

    from datamcp_client.errors import RPCError

    try:
        return asyncio.run(_invoke(args))
    except (UsageError, ValueError) as exc:  # ValueError: the SDK refused an argument
        print(f"datamcp: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except RPCError as exc:
        print(f"datamcp: {exc}", file=sys.stderr)
        if exc.request_id:
            print(f"  (request id {exc.request_id})", file=sys.stderr)
        return exit_code_of(exc)
