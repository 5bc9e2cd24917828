"""``datamcp memory ...``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from datamcp_client.cli._common import (
    ExitCode,
    Output,
    UsageError,
    add_verb,
    key_values,
    read_json,
)
from datamcp_client.cli._progress import follow

if TYPE_CHECKING:
    from datamcp_client import Client, SyncRun

RECORD_FIELDS = (
    "namespace",
    "key",
    "value",
    "version",
    "tags",
    "metadata",
    "store",
    "update_time",
    "expire_time",
    "deleted",
)
RECORD_COLUMNS = ("namespace", "key", "value", "version", "update_time")
SYNC_FIELDS = (
    "id",
    "status",
    "strategy",
    "mode",
    "stores",
    "records_read",
    "records_synced",
    "conflicts_detected",
    "conflicts_resolved",
    "conflicts_pending",
    "duration",
    "error",
)


async def _put(args: argparse.Namespace, client: Client, out: Output) -> int:
    record = await client.memory.put(
        args.namespace,
        args.key,
        read_json(args.value, "VALUE"),
        tags=args.tag or (),
        metadata=key_values(args.meta or (), "--meta"),
        ttl=args.ttl,
        expected_version=args.expected_version or "",
        store=args.store or "",
    )
    out.one(record, RECORD_FIELDS)
    return ExitCode.OK


async def _get(args: argparse.Namespace, client: Client, out: Output) -> int:
    out.one(
        await client.memory.get(args.namespace, args.key, store=args.store or ""), RECORD_FIELDS
    )
    return ExitCode.OK


async def _list(args: argparse.Namespace, client: Client, out: Output) -> int:
    items = [
        r async for r in client.memory.list(args.prefix, store=args.store or "", limit=args.limit)
    ]
    out.many(items, RECORD_COLUMNS)
    return ExitCode.OK


async def _search(args: argparse.Namespace, client: Client, out: Output) -> int:
    items = [
        r
        async for r in client.memory.search(
            args.prefix,
            text=args.text or "",
            tags=args.tag or (),
            metadata=key_values(args.meta or (), "--meta"),
            store=args.store or "",
            limit=args.limit,
        )
    ]
    out.many(items, RECORD_COLUMNS)
    return ExitCode.OK


async def _history(args: argparse.Namespace, client: Client, out: Output) -> int:
    versions = await client.memory.history(args.namespace, args.key, store=args.store or "")
    out.many(versions, ("version", "value", "deleted", "store", "update_time"))
    return ExitCode.OK


def _sync_exit(run: SyncRun) -> int:
    return ExitCode.OK if run.status.name == "SUCCEEDED" else ExitCode.FAILED


async def _sync(args: argparse.Namespace, client: Client, out: Output) -> int:
    run = await client.memory.sync(
        stores=args.store or (),
        strategy=args.strategy or "",
        mode="full" if args.full else "",
        dry_run=args.dry_run,
        namespace_prefix=args.prefix or "",
        background=args.follow,
    )
    if args.follow:
        last = await follow(
            out,
            client.memory.watch_sync(run.id),
            title=f"sync {run.id[:8]}",
            state=lambda r: r.status.name,
            counters=lambda r: (
                f"read {r.records_read:,}  synced {r.records_synced:,}  "
                f"conflicts {r.conflicts_detected:,}"
            ),
        )
        run = last if last is not None and last.done else await client.memory.get_sync_run(run.id)
        if out.json:
            return _sync_exit(run)
    out.one(run, SYNC_FIELDS)
    return _sync_exit(run)


async def _conflicts(args: argparse.Namespace, client: Client, out: Output) -> int:
    items = [
        c
        async for c in client.memory.conflicts(
            status="" if args.all else "pending", namespace_prefix=args.prefix or ""
        )
    ]
    if out.json:
        out.many(items, ())
        return ExitCode.OK
    rows = [
        {
            "id": c.id,
            "namespace": c.namespace,
            "key": c.key,
            "status": c.status,
            "versions": ", ".join(v.version for v in c.versions),
        }
        for c in items
    ]
    out.many(rows, ("id", "namespace", "key", "status", "versions"))
    return ExitCode.OK


async def _resolve(args: argparse.Namespace, client: Client, out: Output) -> int:
    if (args.version is None) == (args.value is None):
        raise UsageError("give exactly one of --version or --value")
    if args.version is not None:
        _, record = await client.memory.resolve(args.conflict_id, version=args.version)
    else:
        value = read_json(args.value, "--value")
        _, record = await client.memory.resolve(args.conflict_id, value=value, use_value=True)
    out.one(record, RECORD_FIELDS)
    return ExitCode.OK


def _store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store id (default: the primary)")


def add_parsers(sub: Any) -> None:
    memory = sub.add_parser("memory", help="memory records and their sync across stores")
    ms = memory.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add_verb(ms, "put", _put, "write a new version of a record")
    p.add_argument("namespace", help="slash-separated, for example agents/planner")
    p.add_argument("key")
    p.add_argument("value", help="JSON value, @FILE or - for stdin")
    p.add_argument("--tag", action="append", help="tag (repeatable)")
    p.add_argument("--meta", action="append", help="metadata KEY=VALUE (repeatable)")
    p.add_argument("--ttl", type=float, help="seconds until it expires")
    p.add_argument("--expected-version", help="write only if this is the current version")
    _store(p)
    for name, handler, text in (
        ("get", _get, "show the current version of a record"),
        ("history", _history, "list the previous versions of a record"),
    ):
        p = add_verb(ms, name, handler, text)
        p.add_argument("namespace")
        p.add_argument("key")
        _store(p)
    p = add_verb(ms, "list", _list, "list live records under a namespace prefix")
    p.add_argument("prefix", nargs="?", default="", help="namespace prefix (default: all)")
    p.add_argument("--limit", type=int, default=100)
    _store(p)
    p = add_verb(ms, "search", _search, "find records by text, tags and metadata")
    p.add_argument("prefix", nargs="?", default="", help="namespace prefix (default: all)")
    p.add_argument("--text", help="case-insensitive text in the key or value")
    p.add_argument("--tag", action="append", help="required tag (repeatable)")
    p.add_argument("--meta", action="append", help="required metadata KEY=VALUE (repeatable)")
    p.add_argument("--limit", type=int, default=100)
    _store(p)
    p = add_verb(
        ms,
        "sync",
        _sync,
        "synchronise the stores (exit 0 only if the sync succeeded)",
    )
    p.add_argument("--store", action="append", help="store to include (repeatable; default all)")
    p.add_argument(
        "--strategy", help="timestamp_wins, source_priority, merge or manual (default: policy)"
    )
    p.add_argument("--full", action="store_true", help="from the start, not from checkpoints")
    p.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")
    p.add_argument("--prefix", help="only this namespace prefix")
    p.add_argument("--follow", "-f", action="store_true", help="show progress until it ends")
    p = add_verb(ms, "conflicts", _conflicts, "list conflicts waiting for a decision")
    p.add_argument("--all", action="store_true", help="resolved ones too")
    p.add_argument("--prefix", help="only this namespace prefix")
    p = add_verb(ms, "resolve", _resolve, "settle a conflict with a version or a value")
    p.add_argument("conflict_id")
    p.add_argument("--version", help="the version that wins")
    p.add_argument("--value", help="JSON value to write instead (@FILE, -)")
