"""Schema changes: Alembic migrations, always under the database's schema lock.

Every place that changes the schema (``datamcp db upgrade``, the Kubernetes
migration Job, the Lambda migration function, a process starting with
``database_migrate = auto``, a memory store creating its tables) does it in
one transaction that first takes the schema lock:

- PostgreSQL: a transaction-level advisory lock (``pg_try_advisory_xact_lock``,
  polled, so no statement timeout cuts a long wait short); released by the
  commit or rollback, even when the process dies.
- SQLite: ``BEGIN EXCLUSIVE`` (retried while another connection holds it).
  DDL is transactional in SQLite too, so a failed migration leaves nothing.

The second process to get the lock finds the schema at head and does
nothing. Without the lock, processes starting together on an empty database
raced on ``CREATE TABLE alembic_version`` and all but one failed.

``verify`` is the check for processes that must not change the schema (a
database user without DDL rights): the deployment migrates once per release.
It reads the revision table with plain SQL and the scripts' revision ids from
their files: importing Alembic costs ~150 ms, a cold start that only
verifies (every Lambda container) should not pay it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from datamcp.core.errors import FailedPrecondition, Unavailable

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: The advisory lock id: the first 8 bytes of a digest of the project's name,
#: so no other application's advisory locks collide with it by accident.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"datamcp.schema").digest()[:8], "big", signed=True)
#: How long a process waits for another one's migration before giving up.
LOCK_WAIT = 300.0
_POLL = 0.1


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an upgrade found and did."""

    before: str | None
    after: str | None
    head: str | None
    #: ``upgraded``, ``current`` (nothing to do) or ``ahead`` (the database was
    #: migrated by a newer release: nothing done, see :func:`upgrade`).
    status: str

    def describe(self) -> str:
        if self.status == "upgraded":
            return f"database upgraded from {self.before or 'empty'} to {self.after}"
        if self.status == "ahead":
            return f"database at {self.before}, newer than this release's {self.head}; left as is"
        return f"database at revision {self.after}"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@asynccontextmanager
async def locked(engine: AsyncEngine, wait: float = LOCK_WAIT) -> AsyncIterator[AsyncConnection]:
    """A connection inside a transaction that holds the schema lock; committed
    when the block ends, rolled back when it raises.

    Raises:
        Unavailable: the lock was not free within ``wait`` seconds.
    """
    conn = await _lock(engine, wait)
    try:
        yield conn
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    finally:
        await conn.close()


async def _lock(engine: AsyncEngine, wait: float) -> AsyncConnection:
    deadline = time.monotonic() + wait
    sqlite = engine.dialect.name == "sqlite"
    while True:
        try:
            conn = await engine.connect()
        except OperationalError as exc:
            # A new SQLite file: connecting sets its journal mode (WAL), which
            # waits for another process's exclusive lock like BEGIN does.
            if not (sqlite and _busy(exc)):
                raise
            if time.monotonic() >= deadline:
                raise _held(wait) from exc
            await asyncio.sleep(_POLL)
            continue
        try:
            if sqlite:
                try:
                    await conn.exec_driver_sql("BEGIN EXCLUSIVE")
                    return conn
                except OperationalError as exc:
                    if not _busy(exc):
                        raise
            else:
                got = await conn.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY}
                )
                if got:
                    return conn
                await conn.rollback()
        except BaseException:
            await conn.close()
            raise
        await conn.close()
        if time.monotonic() >= deadline:
            raise _held(wait)
        await asyncio.sleep(_POLL)


def _busy(exc: OperationalError) -> bool:
    """SQLite's "another connection holds the lock"."""
    return "locked" in str(exc) or "busy" in str(exc)


def _held(wait: float) -> Unavailable:
    return Unavailable(
        f"another process held the schema lock for {wait:.0f}s (a migration still "
        "running, or a stuck session); try again later",
        reason="SCHEMA_LOCKED",
    )


async def upgrade(engine: AsyncEngine, revision: str = "head") -> Outcome:
    """Bring the schema to ``revision`` under the schema lock; a no-op when it
    is there already.

    A database already at a revision this release does not know (a newer
    release migrated it; or this is a rollback of a deployment) is left as is:
    migrations only ever add (expand, then contract in a later release), so
    older code runs on a newer schema, and a rollback must not fail on it.
    """
    async with locked(engine) as conn:
        outcome = await conn.run_sync(_upgrade, revision)
    if outcome.status != "current":
        log.info(outcome.describe(), extra={"before": outcome.before, "after": outcome.after})
    return outcome


def _upgrade(connection: Connection, revision: str) -> Outcome:
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = alembic_config(connection)
    script = ScriptDirectory.from_config(cfg)
    head = script.get_current_head()
    before = MigrationContext.configure(connection).get_current_revision()
    if before is not None and not _known(script, before):
        return Outcome(before, before, head, "ahead")
    target = head if revision == "head" else revision
    if before == target:
        return Outcome(before, before, head, "current")
    command.upgrade(cfg, revision)
    after = MigrationContext.configure(connection).get_current_revision()
    return Outcome(before, after, head, "upgraded")


async def verify(engine: AsyncEngine) -> Outcome:
    """Check, without changing anything, that the schema is this release's.

    Raises:
        FailedPrecondition: reason ``SCHEMA_NOT_CURRENT``: the database is
            empty or at an older revision; migrate it first.
    """

    def check(connection: Connection) -> Outcome:
        head, known = script_revisions()
        current = _stored_revision(connection)
        if current == head:
            return Outcome(current, current, head, "current")
        if current is not None and current not in known:
            return Outcome(current, current, head, "ahead")
        raise FailedPrecondition(
            f"the database schema is at {current or 'no revision (empty)'}; this release "
            f"needs {head}: run the migrations first (`datamcp db upgrade`, the migration "
            "Job or the migration function), or set database_migrate = auto",
            reason="SCHEMA_NOT_CURRENT",
        )

    async with engine.connect() as conn:
        outcome = await conn.run_sync(check)
    if outcome.status == "ahead":
        log.warning(outcome.describe())
    return outcome


def _known(script: ScriptDirectory, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:
        return False


_REVISION = re.compile(r"""^revision\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_DOWN = re.compile(r"""^down_revision\s*=\s*["']([^"']+)["']""", re.MULTILINE)


@functools.cache
def script_revisions() -> tuple[str, frozenset[str]]:
    """(head, every revision) of the migration scripts, from their text."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text()
        found = _REVISION.search(source)
        if found:
            revisions.add(found.group(1))
        parents.update(m.group(1) for m in _DOWN.finditer(source))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migration scripts have {len(heads)} heads: {sorted(heads)}")
    return heads.pop(), frozenset(revisions)


def _stored_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_stored_revision)
