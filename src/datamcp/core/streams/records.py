"""Reading one record against a job's spec: key, event time, aggregated values.

The same reader checks pushed records (to answer with field-level reasons)
and records taken from bus events (to count the bad ones), so both paths
refuse exactly the same records.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from datamcp.core.streams.model import AggFunction, StreamSpec

#: Longest key (as JSON text) a record may have.
MAX_KEY_CHARS = 512
#: Event times a record may carry, in epoch ms: years 1 to 9999 (what a
#: Timestamp and a datetime hold; further out, window bounds overflow).
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A record reduced to what the windows need."""

    key: str  # the key values as JSON text: the identity of the key
    time_ms: int
    values: tuple[float | None, ...]  # one per aggregation (None = not counted)


@dataclass(frozen=True, slots=True)
class Rejection:
    field: str
    description: str


def get_path(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or a private sentinel when absent."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def is_missing(value: Any) -> bool:
    return value is _MISSING


def parse_time_ms(value: Any) -> int | None:
    """Epoch seconds (number) or an RFC 3339 string to epoch milliseconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or not MIN_TIME_MS <= value * 1000 <= MAX_TIME_MS:
            return None
        return round(value * 1000)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return round(parsed.timestamp() * 1000)
    return None


class RecordReader:
    def __init__(self, spec: StreamSpec) -> None:
        self._spec = spec
        self._aggs = [(a.function, a.field) for a in spec.aggregations]

    def read(self, record: Any, default_time: float) -> Prepared | Rejection:
        """Reduce ``record`` or say which field is wrong.

        ``default_time`` (epoch seconds) is the carrying event's time, used
        when the spec names no event-time field.
        """
        if isinstance(record, Rejection):  # the entry point could not read it
            return record
        if not isinstance(record, Mapping):
            return Rejection("", "a record must be a JSON object")
        spec = self._spec
        if spec.event_time_field:
            raw = get_path(record, spec.event_time_field)
            if is_missing(raw):
                return Rejection(spec.event_time_field, "missing event time")
            time_ms = parse_time_ms(raw)
            if time_ms is None:
                return Rejection(
                    spec.event_time_field,
                    "event time must be epoch seconds or an RFC 3339 timestamp, "
                    "between years 1 and 9999",
                )
        else:
            time_ms = round(default_time * 1000)
        key_values = []
        for path in spec.key_fields:
            value = get_path(record, path)
            if is_missing(value):
                return Rejection(path, "missing key field")
            key_values.append(value)
        key = json.dumps(key_values, separators=(",", ":"), sort_keys=True)
        if len(key) > MAX_KEY_CHARS:
            return Rejection(spec.key_fields[0], f"key over {MAX_KEY_CHARS} characters as JSON")
        values: list[float | None] = []
        for function, path in self._aggs:
            if not path:
                values.append(1.0)
                continue
            value = get_path(record, path)
            if is_missing(value) or value is None:
                values.append(None)
            elif function == AggFunction.COUNT:
                values.append(1.0)
            elif isinstance(value, bool) or not isinstance(value, int | float):
                return Rejection(path, f"{function} needs a number, got {type(value).__name__}")
            elif not math.isfinite(value):
                return Rejection(path, "must be a finite number")
            else:
                values.append(float(value))
        return Prepared(key, time_ms, tuple(values))

    def key_dict(self, key: str) -> dict[str, Any]:
        """The key JSON text back as {field: value} for results."""
        return dict(zip(self._spec.key_fields, json.loads(key), strict=True))
