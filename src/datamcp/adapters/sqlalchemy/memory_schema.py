"""The schema of a memory store database: its own ``MetaData`` (created when
a store opens, so a store database needs no migrations of the application
database), what stores made by earlier versions lack, and a record as a
row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
)

from datamcp.core.memory.model import Record

metadata = MetaData()
Big = BigInteger().with_variant(Integer(), "sqlite")


def _record_columns() -> list[Column[Any]]:
    return [
        Column("tenant", String(128), primary_key=True),
        Column("namespace", String(256), primary_key=True),
        Column("key", String(512), primary_key=True),
        Column("value", Text, nullable=True),
        Column("tags", Text, nullable=False),
        Column("metadata", Text, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        Column("expires_at", Float, nullable=True),
        Column("hlc", BigInteger, nullable=False),
        Column("origin", String(64), nullable=False),
        Column("vv", Text, nullable=False),
        Column("deleted", Integer, nullable=False),
        Column("base", Text, nullable=True),
        Column("leaves", Text, nullable=True),
        Column("via", String(64), nullable=False),
    ]


memory_records = Table(
    "memory_records",
    metadata,
    *_record_columns(),
    Column("seq", BigInteger, nullable=False),
    Index("ux_memory_records_seq", "seq", unique=True),
    Index("ix_memory_records_tenant_seq", "tenant", "seq"),
)

memory_history = Table(
    "memory_history",
    metadata,
    *_record_columns(),
    Column("seq", BigInteger, nullable=False),
    Column("hist_hlc", BigInteger, primary_key=True),
    Column("hist_origin", String(64), primary_key=True),
)

memory_meta = Table(
    "memory_meta",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("num", BigInteger, nullable=False),
    Column("label", String(256), nullable=False),
)

memory_checkpoints = Table(
    "memory_checkpoints",
    metadata,
    Column("replication", String(512), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)


# Partial: records without a TTL (most) cost the index nothing on write.
OLD_INDEX, TTL_INDEX = "ix_memory_records_live_expiry", "ix_memory_records_ttl"
LOG_INDEX = "ix_memory_history_tenant_seq"
#: Indexes stores made by earlier versions lack (or should not have).
INDEX_FIXES = (
    text(f"DROP INDEX IF EXISTS {OLD_INDEX}"),  # an earlier, full index
    text(
        f"CREATE INDEX IF NOT EXISTS {TTL_INDEX} ON memory_records (expires_at) "
        "WHERE deleted = 0 AND expires_at IS NOT NULL"
    ),
    # The change log reads replaced versions by (tenant, seq) too.
    text(f"CREATE INDEX IF NOT EXISTS {LOG_INDEX} ON memory_history (tenant, seq)"),
)


def missing_schema(connection: Connection) -> list[str]:
    """What of the store's schema is not there yet (tables, the TTL index), or
    still there though it should not be (the earlier expiry index)."""
    inspector = inspect(connection)
    tables = set(inspector.get_table_names())
    missing = [name for name in metadata.tables if name not in tables]
    if "memory_records" in tables:
        indexes = {ix["name"] for ix in inspector.get_indexes("memory_records")}
        if TTL_INDEX not in indexes:
            missing.append(f"index {TTL_INDEX}")
        if OLD_INDEX in indexes:
            missing.append(f"the removal of index {OLD_INDEX}")
    history = inspector.get_indexes("memory_history") if "memory_history" in tables else []
    if "memory_history" in tables and LOG_INDEX not in {ix["name"] for ix in history}:
        missing.append(f"index {LOG_INDEX}")
    return missing


COLUMNS = (
    "tenant, namespace, key, value, tags, metadata, created_at, updated_at, expires_at, "
    "hlc, origin, vv, deleted, base, leaves, via, seq"
)
NAMES = [c.strip() for c in COLUMNS.split(",")]


def to_record(row: Sequence[Any]) -> Record:
    return Record(
        tenant=row[0],
        namespace=row[1],
        key=row[2],
        value_json=row[3],
        tags=tuple(json.loads(row[4])) if row[4] != "[]" else (),
        metadata=json.loads(row[5]) if row[5] != "{}" else {},
        created_at=row[6],
        updated_at=row[7],
        expires_at=row[8],
        hlc=row[9],
        origin=row[10],
        vv=json.loads(row[11]),
        deleted=bool(row[12]),
        base_json=row[13],
        leaves=json.loads(row[14]) if row[14] is not None else None,
        via=row[15],
        seq=row[16],
    )


def to_tuple(r: Record) -> tuple[Any, ...]:
    """The row in ``COLUMNS`` order."""
    return (
        r.tenant,
        r.namespace,
        r.key,
        r.value_json,
        json.dumps(list(r.tags)) if r.tags else "[]",
        json.dumps(r.metadata, sort_keys=True) if r.metadata else "{}",
        r.created_at,
        r.updated_at,
        r.expires_at,
        r.hlc,
        r.origin,
        json.dumps(r.vv, sort_keys=True, separators=(",", ":")),
        int(r.deleted),
        r.base_json,
        None if r.leaves is None else json.dumps(r.leaves, separators=(",", ":")),
        r.via or r.origin,
        r.seq,
    )


def to_row(r: Record) -> dict[str, Any]:
    return dict(zip(NAMES, to_tuple(r), strict=True))
