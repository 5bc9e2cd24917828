"""Memory records, sync runs and conflicts <-> protobuf."""

from __future__ import annotations

from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.memory.model import (
    Conflict,
    ConflictStatus,
    Record,
    Strategy,
    SyncMode,
    SyncRequest,
    SyncRun,
)
from datamcp.entrypoints.grpc.convert import duration, duration_seconds, timestamp
from datamcp.entrypoints.grpc.values import fill_value
from datamcp.v1 import memory_pb2 as pb

_TIE_BREAKS = {
    "": Strategy.UNSPECIFIED,
    "timestamp_wins": Strategy.TIMESTAMP_WINS,
    "source_priority": Strategy.SOURCE_PRIORITY,
    "manual": Strategy.MANUAL,
}


def record_to_proto(r: Record, store: str = "") -> pb.MemoryRecord:
    out = pb.MemoryRecord(
        namespace=r.namespace,
        key=r.key,
        tags=list(r.tags),
        metadata=r.metadata,
        create_time=timestamp(r.created_at),
        update_time=timestamp(r.updated_at),
        version=str(r.version),
        hlc=r.hlc,
        origin=r.origin,
        causal_context=r.vv,
        deleted=r.deleted,
        sequence=r.seq,
        store=store,
    )
    if r.value_json is not None:
        fill_value(out.value, r.value)
    if r.expires_at is not None:
        out.expire_time.CopyFrom(timestamp(r.expires_at))
    return out


def run_to_proto(run: SyncRun) -> pb.SyncRun:
    out = pb.SyncRun(
        sync_id=run.id,
        status=int(run.status),  # type: ignore[arg-type]
        strategy=int(run.strategy),  # type: ignore[arg-type]
        mode=int(run.mode),  # type: ignore[arg-type]
        stores=list(run.stores),
        dry_run=run.dry_run,
        records_synced=run.records_synced,
        records_read=run.records_read,
        conflicts_detected=run.conflicts_detected,
        conflicts_resolved=run.conflicts_resolved,
        conflicts_pending=run.conflicts_pending,
        start_time=timestamp(run.started_at),
        duration=duration(run.duration),
        error=run.error,
        trigger=run.trigger,
        namespace_prefix=run.namespace_prefix,
    )
    if run.ended_at is not None:
        out.end_time.CopyFrom(timestamp(run.ended_at))
    return out


def conflict_to_proto(c: Conflict) -> pb.Conflict:
    out = pb.Conflict(
        id=c.id,
        namespace=c.namespace,
        key=c.key,
        status=int(c.status),  # type: ignore[arg-type]
        strategy=int(c.strategy),  # type: ignore[arg-type]
        sync_id=c.sync_id,
        versions=[record_to_proto(v, v.via) for v in c.versions],
        winner=c.winner,
        detect_time=timestamp(c.detected_at),
    )
    if c.resolved_at is not None:
        out.resolve_time.CopyFrom(timestamp(c.resolved_at))
    return out


def sync_request(request: pb.SynchronizeRequest) -> SyncRequest:
    bad: list[FieldViolation] = []
    if request.strategy not in Strategy._value2member_map_:
        bad.append(FieldViolation("strategy", "a SYNC_STRATEGY_* value"))
    if request.mode not in SyncMode._value2member_map_:
        bad.append(FieldViolation("mode", "a SYNC_MODE_* value"))
    tie = _TIE_BREAKS.get(request.tie_break.lower())
    if tie is None:
        bad.append(FieldViolation("tie_break", "timestamp_wins, source_priority or manual"))
    if bad:
        raise InvalidArgument("invalid sync request", bad, reason="INVALID_SYNC")
    assert tie is not None
    return SyncRequest(
        stores=tuple(request.stores),
        strategy=Strategy(request.strategy),
        mode=SyncMode(request.mode) or SyncMode.INCREMENTAL,
        dry_run=request.dry_run,
        namespace_prefix=request.namespace_prefix,
        priority=tuple(request.priority),
        tie_break=tie,
        trigger="manual",
    )


def conflict_status(value: int) -> ConflictStatus:
    if value not in ConflictStatus._value2member_map_:
        raise InvalidArgument(
            "unknown conflict status", [FieldViolation("status", "a CONFLICT_STATUS_* value")]
        )
    return ConflictStatus(value)


def ttl_seconds(message: Any, prefix: str = "") -> float | None:
    """A Put's time to live in seconds (None: never expires)."""
    if not message.HasField("ttl"):
        return None
    return duration_seconds(message.ttl, f"{prefix}ttl")  # range: MemoryService.op
