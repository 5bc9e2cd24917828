"""A memory store in one SQLAlchemy database (SQLite file or PostgreSQL).

Each store has its own schema (its own ``MetaData``, created on open), so a
store database needs no migrations of the application database; only a
store configured as the application database shares its file. Every write
takes a number from the store's counter row first, inside its transaction:
that row lock serialises writers (no lost update on read-modify-write) and
makes change sequences visible in commit order, so a change-feed reader can
never skip a change that commits late. The feed is an index range scan on
``(tenant, seq)``: incremental sync costs follow the changes, not the store.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    event,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.errors import translate
from datamcp.adapters.sqlalchemy.event_repository import SqlEventRepository
from datamcp.adapters.sqlalchemy.memory_schema import (
    COLUMNS,
    INDEX_FIXES,
    NAMES,
    metadata,
    missing_schema,
    to_record,
    to_row,
    to_tuple,
)
from datamcp.adapters.sqlalchemy.uow import _turn
from datamcp.core.errors import ConfigError, FailedPrecondition
from datamcp.core.events.model import Event
from datamcp.core.memory.model import Record

_HISTORY = text(
    f"INSERT INTO memory_history ({COLUMNS}, hist_hlc, hist_origin) "
    f"VALUES ({', '.join(':' + n for n in NAMES)}, :hlc, :origin) "
    "ON CONFLICT DO NOTHING"
)
_TRIM = text(
    "DELETE FROM memory_history WHERE tenant = :tenant AND namespace = :namespace "
    "AND key = :key AND hist_hlc <= (SELECT hist_hlc FROM memory_history "
    "WHERE tenant = :tenant AND namespace = :namespace AND key = :key "
    "ORDER BY hist_hlc DESC LIMIT 1 OFFSET :depth)"
)
_TAKE_SEQ = text("UPDATE memory_meta SET num = num + :n WHERE name = 'seq' RETURNING num")
_LOCK_PG = text("SELECT num FROM memory_meta WHERE name = 'seq' FOR UPDATE")
_LOCK_SQLITE = text("UPDATE memory_meta SET num = num WHERE name = 'seq'")
_CHECKPOINT = text(
    "INSERT INTO memory_checkpoints (replication, seq, updated_at) VALUES (:r, :s, :t) "
    "ON CONFLICT (replication) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"
)
_PREFIX = "(namespace = :p OR (namespace > :p_lo AND namespace < :p_hi))"
_LIVE = "deleted = 0 AND (expires_at IS NULL OR expires_at > :now)"


def _like(text_: str) -> str:
    """``text_`` as a literal inside a LIKE pattern (escape character ``!``)."""
    return text_.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _element_filters(
    sqlite: bool, column: str, opener: str, name: str, encoded: str, *, params: dict[str, Any]
) -> str:
    """``column`` (a JSON list or object written by ``to_tuple``) holds the
    element ``encoded`` (a JSON string, or ``"k": "v"``) as a whole element,
    case-sensitively (LIKE is not, on SQLite).

    In that JSON text an unescaped quote is always a delimiter, so
    ``encoded`` right after ``[`` / ``{`` or ``, `` and ending in its own
    closing quote cannot match part of another element.
    """
    params[f"{name}_a"] = opener + encoded
    params[f"{name}_n"] = len(opener + encoded)
    params[f"{name}_b"] = ", " + encoded
    find = "instr" if sqlite else "strpos"
    return f"(substr({column}, 1, :{name}_n) = :{name}_a OR {find}({column}, :{name}_b) > 0)"


def _marks(sqlite: bool, count: int, start: int = 1) -> list[str]:
    """Driver placeholders: qmark for sqlite3, $n for asyncpg."""
    return ["?"] * count if sqlite else [f"${i}" for i in range(start, start + count)]


def _upsert_sql(sqlite: bool) -> str:
    marks = ", ".join(_marks(sqlite, len(NAMES)))
    updates = ", ".join(f"{n} = excluded.{n}" for n in NAMES[3:])
    return (
        f"INSERT INTO memory_records ({COLUMNS}) VALUES ({marks}) "
        f"ON CONFLICT (tenant, namespace, key) DO UPDATE SET {updates}"
    )


KEYS_PER_QUERY = 500
SQLITE_CACHE_KIB = 64 * 1024


def _prefix_params(prefix: str) -> dict[str, str]:
    # '/' is 0x2F and '0' is 0x30: children of "a/b" sort strictly between
    # "a/b/" and "a/b0" (namespace characters are letters, digits, _ . -).
    return {"p": prefix, "p_lo": prefix + "/", "p_hi": prefix + "0"}


class SqlStoreTx:
    def __init__(self, conn: AsyncConnection, store_id: str, *, outbox: bool = False) -> None:
        self._conn = conn
        self._store_id = store_id
        self._sqlite = conn.dialect.name == "sqlite"
        self._outbox = outbox

    async def add_events(self, events: Sequence[Event]) -> bool:
        """Store ``events`` in the application's event table in this
        transaction (only when the store is the application database)."""
        if not self._outbox:
            return False
        # append skips ids already stored; a repeat within the batch is dropped here.
        fresh: dict[tuple[str, str], Event] = {}
        for e in events:
            fresh.setdefault((e.tenant, e.id), e)
        await SqlEventRepository(self._conn).append(list(fresh.values()), time.time())
        return True

    async def get_many(
        self, tenant: str, idents: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], Record]:
        return await fetch_many(self._conn, tenant, idents)

    async def write(
        self, records: Sequence[Record], replaced: Sequence[Record], history_depth: int
    ) -> None:
        if not records:
            return
        end = (await self._conn.execute(_TAKE_SEQ, {"n": len(records)})).scalar_one()
        rows = []
        for i, record in enumerate(records):
            record.seq = end - len(records) + 1 + i
            if not record.via:
                record.via = self._store_id
            rows.append(to_tuple(record))
        if replaced and history_depth > 0:
            await self._conn.execute(_HISTORY, [to_row(r) for r in replaced])
            trims = {(r.tenant, r.namespace, r.key) for r in replaced}
            await self._conn.execute(
                _TRIM,
                [
                    {"tenant": t, "namespace": n, "key": k, "depth": history_depth}
                    for t, n, k in sorted(trims)
                ],
            )
        # Driver-level executemany of plain tuples: no per-row parameter
        # processing, which is most of the cost of a large page.
        await self._conn.exec_driver_sql(_upsert_sql(self._sqlite), rows)

    async def set_checkpoint(self, replication: str, seq: int) -> None:
        await self._conn.execute(_CHECKPOINT, {"r": replication, "s": seq, "t": time.time()})

    async def commit(self) -> None:
        await self._conn.commit()


async def fetch_many(
    conn: AsyncConnection, tenant: str, idents: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Record]:
    """Records by (namespace, key): one primary-key range per namespace and chunk."""
    by_namespace: dict[str, list[str]] = {}
    for namespace, key in idents:
        by_namespace.setdefault(namespace, []).append(key)
    out: dict[tuple[str, str], Record] = {}
    sqlite = conn.dialect.name == "sqlite"
    for namespace, keys in by_namespace.items():
        for i in range(0, len(keys), KEYS_PER_QUERY):
            chunk = keys[i : i + KEYS_PER_QUERY]
            t, n, *names = _marks(sqlite, len(chunk) + 2)
            result = await conn.exec_driver_sql(
                f"SELECT {COLUMNS} FROM memory_records WHERE tenant = {t} "
                f"AND namespace = {n} AND key IN ({', '.join(names)})",
                (tenant, namespace, *chunk),
            )
            for row in result.all():
                record = to_record(tuple(row))
                out[record.ident] = record
    return out


def _sqlite_cache(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.execute("PRAGMA wal_autocheckpoint=10000")
    cursor.close()


class SqlMemoryStore:
    """A :class:`~datamcp.core.memory.ports.MemoryStore` on one engine.

    Args:
        store_id: the configured id (recorded in the database on first open;
            a database already owned by another id is refused).
        engine: the engine (shared with the application when the store is
            the application database).
        primary: whether reads and writes go here by default.
        owns_engine: dispose the engine on close.
        outbox: the engine is the application database: memory events can
            commit in the write's own transaction (``StoreTx.add_events``).
    """

    def __init__(
        self,
        store_id: str,
        engine: AsyncEngine,
        *,
        primary: bool = False,
        owns_engine: bool = True,
        outbox: bool = False,
    ) -> None:
        self._outbox = outbox
        self._id = store_id
        self._engine = engine
        self._primary = primary
        self._owns = owns_engine
        self._sqlite = engine.dialect.name == "sqlite"
        if self._sqlite and owns_engine:
            # A page of changes touches rows all over a large store; a bigger
            # page cache keeps what the reads loaded for the writes after them.
            event.listen(engine.sync_engine, "connect", _sqlite_cache)

    @property
    def id(self) -> str:
        return self._id

    @property
    def primary(self) -> bool:
        return self._primary

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def open(self, *, create: bool = True) -> None:
        """Claim the database for this store id, creating its schema first when
        something is missing and ``create`` allows it (``database_migrate =
        auto``, or the migration step). Under the schema lock (``migrate.locked``),
        so processes opening one new store together create it once; with the
        schema in place no DDL is issued, so a user without DDL rights can open it.

        Raises:
            ConfigError: the database belongs to another store id.
            FailedPrecondition: the schema is missing and ``create`` is off.
        """
        lock = _turn(self._engine)
        if lock is not None:
            await lock.acquire()
        try:
            async with migrate.locked(self._engine) as conn:
                missing = await conn.run_sync(missing_schema)
                if missing and not create:
                    raise FailedPrecondition(
                        f"memory store {self._id} ({self.url}) lacks {', '.join(missing)}: "
                        "run the migrations first (`datamcp db upgrade`)",
                        reason="SCHEMA_NOT_CURRENT",
                    )
                if missing:
                    await conn.run_sync(metadata.create_all)
                    for statement in INDEX_FIXES:
                        await conn.execute(statement)
                owner = (
                    await conn.execute(text("SELECT label FROM memory_meta WHERE name = 'store'"))
                ).scalar_one_or_none()
                if owner is None:
                    await conn.execute(
                        text(
                            "INSERT INTO memory_meta (name, num, label) VALUES "
                            "('seq', 0, ''), ('store', 0, :id)"
                        ),
                        {"id": self._id},
                    )
                elif owner != self._id:
                    raise ConfigError(
                        [
                            f"memory.stores: {self.url} already holds memory store {owner!r}, "
                            f"not {self._id!r} (each store needs its own database)"
                        ]
                    )
        finally:
            if lock is not None:
                lock.release()

    async def close(self) -> None:
        if self._owns:
            await self._engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqlStoreTx]:
        lock = _turn(self._engine)
        if lock is not None:
            await lock.acquire()
        try:
            async with self._engine.connect() as conn:
                await conn.begin()
                # Take the write lock first: reads in this transaction then see
                # a state no other writer can change before we commit.
                await conn.execute(_LOCK_SQLITE if self._sqlite else _LOCK_PG)
                try:
                    yield SqlStoreTx(conn, self._id, outbox=self._outbox)
                finally:
                    if conn.in_transaction():
                        await conn.rollback()
        except Exception as error:
            if (core := translate(error)) is not None:
                raise core from error
            raise
        finally:
            if lock is not None:
                lock.release()

    async def _read(self, sql: Any, params: dict[str, Any]) -> list[Any]:
        async with self._engine.connect() as conn:
            rows = list((await conn.execute(sql, params)).all())
            await conn.rollback()
        return rows

    async def get(self, tenant: str, namespace: str, key: str) -> Record | None:
        rows = await self._read(
            text(
                f"SELECT {COLUMNS} FROM memory_records WHERE tenant = :t "
                "AND namespace = :n AND key = :k"
            ),
            {"t": tenant, "n": namespace, "k": key},
        )
        return to_record(rows[0]) if rows else None

    async def changes(
        self,
        tenant: str,
        after: int,
        limit: int,
        prefix: str = "",
        skip_via: str = "",
        *,
        versions: bool = False,
    ) -> tuple[list[Record], int]:
        # With versions: the replaced versions the history keeps carry the
        # seq they were written with, so the two tables together are the log.
        tables = ("memory_records", "memory_history") if versions else ("memory_records",)
        seqs = " UNION ALL ".join(
            f"SELECT seq FROM {t} WHERE tenant = :t AND seq > :a" for t in tables
        )
        async with self._engine.connect() as conn:
            last = (
                await conn.execute(
                    text(f"SELECT max(seq) FROM ({seqs} ORDER BY seq LIMIT :l) AS page"),
                    {"t": tenant, "a": after, "l": limit},
                )
            ).scalar_one_or_none()
            if last is None:
                await conn.rollback()
                return [], after
            where = "tenant = :t AND seq > :a AND seq <= :z"
            params: dict[str, Any] = {"t": tenant, "a": after, "z": last}
            if skip_via:
                where += " AND via <> :v"
                params["v"] = skip_via
            if prefix:
                where += f" AND {_PREFIX}"
                params.update(_prefix_params(prefix))
            rows = (
                await conn.execute(
                    text(
                        " UNION ALL ".join(
                            f"SELECT {COLUMNS} FROM {t} WHERE {where}" for t in tables
                        )
                        + " ORDER BY seq"
                    ),
                    params,
                )
            ).all()
            await conn.rollback()
        return [to_record(r) for r in rows], int(last)

    async def pending(self, tenant: str, after: int) -> int:
        rows = await self._read(
            text("SELECT count(*) FROM memory_records WHERE tenant = :t AND seq > :a"),
            {"t": tenant, "a": after},
        )
        return int(rows[0][0])

    async def scan(
        self, tenant: str, prefix: str, after: tuple[str, str] | None, limit: int
    ) -> list[Record]:
        where = "tenant = :t"
        params: dict[str, Any] = {"t": tenant, "l": limit}
        if prefix:
            where += f" AND {_PREFIX}"
            params.update(_prefix_params(prefix))
        if after is not None:
            where += " AND (namespace > :an OR (namespace = :an AND key > :ak))"
            params.update(an=after[0], ak=after[1])
        rows = await self._read(
            text(
                f"SELECT {COLUMNS} FROM memory_records WHERE {where} "
                "ORDER BY namespace, key LIMIT :l"
            ),
            params,
        )
        return [to_record(r) for r in rows]

    async def search(
        self,
        tenant: str,
        prefix: str,
        after: tuple[str, str] | None,
        limit: int,
        *,
        now: float,
        live_only: bool = True,
        tags: Sequence[str] = (),
        metadata: dict[str, str] | None = None,
        text_contains: str = "",
    ) -> list[Record]:
        where = "tenant = :t"
        params: dict[str, Any] = {"t": tenant, "l": limit, "now": now}
        if prefix:
            where += f" AND {_PREFIX}"
            params.update(_prefix_params(prefix))
        if after is not None:
            where += " AND (namespace > :an OR (namespace = :an AND key > :ak))"
            params.update(an=after[0], ak=after[1])
        if live_only:
            where += f" AND {_LIVE}"
        for i, tag in enumerate(sorted(set(tags))):
            where += " AND " + _element_filters(
                self._sqlite, "tags", "[", f"tag{i}", json.dumps(tag), params=params
            )
        for i, (k, v) in enumerate(sorted((metadata or {}).items())):
            pair = f"{json.dumps(k)}: {json.dumps(v)}"
            where += " AND " + _element_filters(
                self._sqlite, "metadata", "{", f"meta{i}", pair, params=params
            )
        if text_contains:
            params["needle"] = "%" + _like(text_contains.lower()) + "%"
            where += (
                " AND (lower(key) LIKE :needle ESCAPE '!' OR lower(value) LIKE :needle ESCAPE '!')"
            )
        rows = await self._read(
            text(
                f"SELECT {COLUMNS} FROM memory_records WHERE {where} "
                "ORDER BY namespace, key LIMIT :l"
            ),
            params,
        )
        return [to_record(r) for r in rows]

    async def expired(self, now: float, limit: int) -> list[Record]:
        rows = await self._read(
            text(
                f"SELECT {COLUMNS} FROM memory_records WHERE deleted = 0 "
                "AND expires_at <= :now ORDER BY expires_at LIMIT :l"
            ),
            {"now": now, "l": limit},
        )
        return [to_record(r) for r in rows]

    async def history(self, tenant: str, namespace: str, key: str, limit: int) -> list[Record]:
        rows = await self._read(
            text(
                f"SELECT {COLUMNS} FROM memory_history WHERE tenant = :t AND namespace = :n "
                "AND key = :k ORDER BY hist_hlc DESC LIMIT :l"
            ),
            {"t": tenant, "n": namespace, "k": key, "l": limit},
        )
        return [to_record(r) for r in rows]

    async def checkpoint(self, replication: str) -> int:
        rows = await self._read(
            text("SELECT seq FROM memory_checkpoints WHERE replication = :r"), {"r": replication}
        )
        return int(rows[0][0]) if rows else 0

    async def set_checkpoint(self, replication: str, seq: int) -> None:
        async with self.transaction() as tx:
            await tx.set_checkpoint(replication, seq)
            await tx.commit()

    async def stats(self, tenant: str) -> tuple[int, int]:
        rows = await self._read(
            text("SELECT max(seq), count(*) FROM memory_records WHERE tenant = :t"), {"t": tenant}
        )
        return int(rows[0][0] or 0), int(rows[0][1])
