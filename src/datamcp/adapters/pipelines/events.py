"""The ``events`` source kind: a replay of the tenant's stored events
(``core.pipelines.event_source``); columns ``seq, id, type, source,
subject, time, correlation_id, data``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamcp.core.errors import FieldViolation
from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.event_source import EventSource
from datamcp.core.pipelines.ports import PermanentError

KIND = "events"


def parse_source(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = c.mapping(raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("types", "source", "subject"))
    types = o.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        c.fail(f"{path}.types", "expected a list of event types")
        types = []
    out = {
        "types": list(types),
        "source": c.string(o, "source", path),
        "subject": c.string(o, "subject", path),
    }
    c.event_filter(out, path)
    return out


def check_source(connectors: Any, o: Mapping[str, Any], path: str, problems: list[Any]) -> None:
    if connectors.bus is None:
        problems.append(FieldViolation(path, "event sources need the server's event bus"))


def source(connectors: Any, o: Mapping[str, Any], ctx: Any, where: str) -> EventSource:
    if connectors.bus is None:
        raise PermanentError(f"{where}: no event bus here", "INVALID_PIPELINE")
    return EventSource(connectors.bus, dict(o), ctx)
