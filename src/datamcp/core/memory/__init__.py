"""Versioned memory records, kept in several stores and synchronised.

Public pieces: :class:`~datamcp.core.memory.model.Record` and friends,
:class:`~datamcp.core.memory.service.MemoryService` (reads and writes),
:class:`~datamcp.core.memory.sync.SyncEngine` (runs, conflicts, strategies)
and :class:`~datamcp.core.memory.schedule.SyncScheduler` (cron).
"""

from datamcp.core.memory.model import (
    Conflict,
    ConflictStatus,
    Record,
    RunStatus,
    Strategy,
    SyncMode,
    SyncRequest,
    SyncRun,
    Version,
)

__all__ = [
    "Conflict",
    "ConflictStatus",
    "Record",
    "RunStatus",
    "Strategy",
    "SyncMode",
    "SyncRequest",
    "SyncRun",
    "Version",
]
