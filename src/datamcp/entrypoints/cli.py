"""The server's part of the ``datamcp`` command: serve, db upgrade, lambda-local, auth.

The client verbs (task, events, pipeline, memory, health, ...) come from
``datamcp_client.cli``; :func:`main` is that command line extended with the
commands that need the server installed.

Exit codes of these commands: 0 success, 1 runtime failure (database
unreachable), 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from datamcp.config.fields import FIELDS
from datamcp.config.settings import Settings, default_data_root, load_settings
from datamcp.core.errors import ConfigError, Unavailable
from datamcp.observability.logging import configure_logging

log = logging.getLogger("datamcp")


# The flags `db upgrade` needs: where the database is, nothing about serving.
_DATABASE_FLAGS = frozenset({"data_dir", "database_url"})


def _add_setting_flags(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    parser.add_argument("--config", help="TOML config file (env DATAMCP_CONFIG)")
    for field in FIELDS:
        if field.flag is None or (only is not None and field.key not in only):
            continue
        if field.kind == "bool":
            parser.add_argument(
                field.flag,
                dest=field.key,
                action="store_true",
                default=None,
                help=f"{field.help} (env {field.env})",
            )
        else:
            parser.add_argument(
                field.flag,
                dest=field.key,
                type={"int": int, "float": float}.get(field.kind, str),
                metavar=field.key.split(".")[-1].upper(),
                help=f"{field.help} (env {field.env})",
            )


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.key: getattr(args, f.key, None) for f in FIELDS if f.flag}
    return load_settings(config_file=args.config, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)
    if settings.server.workers > 1:
        from datamcp.entrypoints.workers import run_workers

        return run_workers(settings, _ARGV)
    return asyncio.run(_run_server(settings))


async def _run_server(settings: Settings) -> int:
    from datamcp.bootstrap import App
    from datamcp.entrypoints.grpc.server import MeshServer

    # Handlers first: a SIGTERM during start-up (a rollout, a scale-down) must
    # still end in a graceful stop, never in the default kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for root in settings.pipelines.data_roots:
        if root == default_data_root(settings.data_dir):
            root.mkdir(parents=True, exist_ok=True)
    try:
        app = await App.create(settings)
    except Unavailable as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    server = MeshServer(app)
    try:
        await server.start()
    except ConfigError:
        await app.close()
        raise
    _freeze_startup_heap()
    await stop.wait()
    await server.stop()
    return 0


def _freeze_startup_heap() -> None:
    """Hide what start-up built from the garbage collector.

    Modules, protobuf descriptors, SQLAlchemy metadata and the app live as
    long as the process, yet every full (oldest-generation) collection
    walked all of them: under load that was a ~50 ms pause a few times a
    minute, the whole tail of event delivery latency (p99 36-66 ms at 1,000
    events/s; 9 ms with the start-up heap frozen). ``gc.freeze`` moves them
    to a permanent generation, so later collections scan only objects made
    since. The cost: start-up garbage in reference cycles that only a later
    collection would have found is kept, hence the collection first.
    """
    gc.collect()
    gc.freeze()


def _db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.logging.level, settings.logging.format)

    async def run() -> int:
        from datamcp.bootstrap import migrate_database

        try:
            done = await migrate_database(settings)
        except Unavailable as exc:
            print(f"datamcp: {exc.message}", file=sys.stderr)
            return 1
        for line in done:
            print(line)
        return 0

    return asyncio.run(run())


def _hash_key(args: argparse.Namespace) -> int:
    from datamcp.core.auth import hash_api_key

    key = args.key or (sys.stdin.readline().strip() if not sys.stdin.isatty() else "")
    if not key:
        key = getpass.getpass("API key: ")
    if len(key) < 16:
        print("refusing: API keys must be at least 16 characters of randomness", file=sys.stderr)
        return 2
    print(hash_api_key(key))
    return 0


def add_server_commands(sub: Any) -> None:
    """serve, db upgrade, lambda-local and auth hash-key on the ``datamcp`` parser."""
    serve = sub.add_parser("serve", help="run the gRPC mesh server")
    _add_setting_flags(serve)
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="apply migrations up to the latest revision")
    _add_setting_flags(upgrade, _DATABASE_FLAGS)
    upgrade.set_defaults(func=_db_upgrade)

    from datamcp.entrypoints import lambda_local

    lambda_local.add_parser(sub)

    auth = sub.add_parser("auth", help="authentication helpers")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    hash_key = auth_sub.add_parser("hash-key", help="print the sha256 to configure for an API key")
    hash_key.add_argument("key", nargs="?", help="the key (else read from stdin or prompted)")
    hash_key.set_defaults(func=_hash_key)


#: The command line ``main`` was given (``--workers`` starts it again per worker).
_ARGV: list[str] = []


def main(argv: Sequence[str] | None = None) -> int:
    from datamcp_client.cli import main as client_main

    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    try:
        return client_main(argv, extend=add_server_commands)
    except ConfigError as exc:
        print(f"datamcp: {exc.message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
