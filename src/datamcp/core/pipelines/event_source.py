"""Events from the bus as a pipeline source (a replay of stored events).

Columns: ``seq, id, type, source, subject, time, correlation_id, data``.
With ``incremental.column: seq`` each run reads only events stored after
the previous run's last one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import Event, EventFilter
from datamcp.core.pipelines.frame import field, json_text
from datamcp.core.pipelines.ports import ReadContext, SourceBatch

COLUMNS = ["seq", "id", "type", "source", "subject", "time", "correlation_id", "data"]
KINDS = ["integer", "string", "string", "string", "string", "timestamp", "string", "json"]


class EventSource:
    def __init__(self, bus: EventBus, options: dict[str, Any], ctx: ReadContext) -> None:
        self.bus = bus
        self.filter = EventFilter.build(options["types"], options["source"], options["subject"])
        self.ctx = ctx
        self._events: AsyncIterator[Event] | None = None

    async def open(self) -> list[str]:
        start = 0
        if self.ctx.cursor_column == "seq" and isinstance(self.ctx.cursor, int | float):
            start = int(self.ctx.cursor)
        self._events = self.bus.replay(self.ctx.tenant, self.filter, from_seq=start)
        return list(COLUMNS)

    async def read(self, size: int) -> SourceBatch | None:
        if self._events is None:
            return None
        rows: list[list[Any]] = []
        async for e in self._events:
            data = None if e.data is None else json_text(e.data)
            when = dt.datetime.fromtimestamp(e.time, dt.UTC)
            rows.append([e.seq, e.id, e.type, e.source, e.subject, when, e.correlation_id, data])
            if len(rows) >= size:
                break
        if not rows:
            self._events = None
            return None
        import pyarrow as pa  # with the run, never with the spec

        schema = pa.schema([field(c, k) for c, k in zip(COLUMNS, KINDS, strict=True)])
        columns = [pa.array([r[i] for r in rows], f.type) for i, f in enumerate(schema)]
        return SourceBatch(pa.Table.from_arrays(columns, schema=schema))

    async def close(self) -> None:
        events, self._events = self._events, None
        if events is not None and hasattr(events, "aclose"):
            await events.aclose()
