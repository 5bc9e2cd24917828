"""Stream jobs: the spec (source, key, event time, window, aggregations,
watermark, sink), its validation, and the job as stored.

Times inside the engine are integer milliseconds since the epoch, so window
boundaries never drift with float rounding; the API speaks seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.events.model import TYPE_RE, validate_pattern

WINDOW_CLOSED = "stream.window.closed"
RECORD_LATE = "stream.record.late"
RECORDS_PUSHED = "stream.records.pushed"
NAME_MAX = 128
MAX_KEY_FIELDS = 8
MAX_AGGREGATIONS = 32
#: Longest window, gap or delay accepted (30 days).
MAX_SPAN_MS = 30 * 86_400_000
#: A sliding window belongs to at most this many windows per record.
MAX_WINDOWS_PER_RECORD = 100
TABLE_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


class WindowKind(StrEnum):
    TUMBLING = "tumbling"
    SLIDING = "sliding"
    SESSION = "session"


class AggFunction(StrEnum):
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"


@dataclass(frozen=True, slots=True)
class Aggregation:
    function: AggFunction
    field: str = ""
    name: str = ""

    @property
    def output(self) -> str:
        if self.name:
            return self.name
        if self.field:
            return f"{self.function}_{self.field.replace('.', '_')}"
        return str(self.function)


@dataclass(frozen=True, slots=True)
class Window:
    kind: WindowKind
    size_ms: int = 0
    slide_ms: int = 0
    gap_ms: int = 0


@dataclass(frozen=True, slots=True)
class EventSource:
    """Bus events matching the filter; ``where`` compares data fields for equality."""

    types: tuple[str, ...]
    source: str = ""
    subject: str = ""
    where: Mapping[str, Any] = field(default_factory=dict)
    from_earliest: bool = False


@dataclass(frozen=True, slots=True)
class Sink:
    emit_events: bool = True
    event_type: str = WINDOW_CLOSED
    table: str = ""
    late_events: bool = False


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What a job reads (``source`` None = records pushed by clients), how it
    windows and aggregates, and where results go."""

    window: Window
    aggregations: tuple[Aggregation, ...]
    sink: Sink
    source: EventSource | None = None
    key_fields: tuple[str, ...] = ()
    event_time_field: str = ""
    watermark_delay_ms: int = 0
    allowed_lateness_ms: int = 0
    #: Processing time without records after which every open window is
    #: closed (the watermark advances past them); 0 = never.
    idle_timeout_ms: int = 0

    @property
    def pushed(self) -> bool:
        return self.source is None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StreamSpec:
        raw = json.loads(text)
        src = raw.get("source")
        return cls(
            window=Window(WindowKind(raw["window"]["kind"]), **_without(raw["window"], "kind")),
            aggregations=tuple(
                Aggregation(AggFunction(a["function"]), a["field"], a["name"])
                for a in raw["aggregations"]
            ),
            sink=Sink(**raw["sink"]),
            source=None
            if src is None
            else EventSource(
                tuple(src["types"]),
                src["source"],
                src["subject"],
                dict(src["where"]),
                src["from_earliest"],
            ),
            key_fields=tuple(raw["key_fields"]),
            event_time_field=raw["event_time_field"],
            watermark_delay_ms=raw["watermark_delay_ms"],
            allowed_lateness_ms=raw["allowed_lateness_ms"],
            idle_timeout_ms=raw.get("idle_timeout_ms", 0),
        )


def _without(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != key}


@dataclass(slots=True)
class Counters:
    accepted: int = 0
    late: int = 0
    rejected: int = 0
    windows_open: int = 0
    windows_emitted: int = 0
    inputs: int = 0
    checkpoints: int = 0
    #: Times the idle timeout closed the open windows.
    idle_flushes: int = 0

    @property
    def records(self) -> int:
        """Records read, whatever became of them."""
        return self.accepted + self.late + self.rejected

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Counters:
        return cls(**json.loads(text))

    def copy(self) -> Counters:
        return Counters(**asdict(self))


@dataclass(frozen=True, slots=True)
class StreamJob:
    id: str
    tenant: str
    name: str
    spec: StreamSpec
    created_at: float
    request_id: str = ""
    #: Largest event time seen (ms), None before the first record.
    max_event_ms: int | None = None
    counters: Counters = field(default_factory=Counters)
    checkpoint_at: float = 0.0
    last_error: str = ""

    @property
    def subscription(self) -> str:
        """The durable bus subscription feeding this job."""
        return f"stream:{self.id}"

    @property
    def source_uri(self) -> str:
        return f"/streams/{self.id}"

    @property
    def watermark_ms(self) -> int | None:
        if self.max_event_ms is None:
            return None
        return self.max_event_ms - self.spec.watermark_delay_ms


def validate(name: str, spec: StreamSpec, prefix: str = "job.") -> None:
    """Check a job's name and spec; every problem is one field violation.

    Raises:
        InvalidArgument: reason INVALID_STREAM_JOB, nothing is stored.
    """
    bad: list[FieldViolation] = []

    def fail(path: str, why: str) -> None:
        bad.append(FieldViolation(prefix + path, why))

    if not name or len(name) > NAME_MAX:
        fail("name", f"required, 1-{NAME_MAX} characters")
    src = spec.source
    if src is not None:
        if not src.types:
            fail("spec.events.types", "at least one event type pattern (e.g. sensor.*)")
        for i, pattern in enumerate(src.types):
            try:
                validate_pattern(pattern)
            except InvalidArgument:
                fail(f"spec.events.types[{i}]", "exact type, prefix ending in '.*', or '*'")
        for path in src.where:
            if not PATH_RE.match(path):
                fail(f"spec.events.where[{path}]", "a dotted field path (e.g. device.site)")
    if len(spec.key_fields) > MAX_KEY_FIELDS:
        fail("spec.key_fields", f"at most {MAX_KEY_FIELDS} fields")
    for i, path in enumerate(spec.key_fields):
        if not PATH_RE.match(path):
            fail(f"spec.key_fields[{i}]", "a dotted field path (e.g. device.id)")
    if len(set(spec.key_fields)) != len(spec.key_fields):
        fail("spec.key_fields", "fields must be distinct")
    if spec.event_time_field and not PATH_RE.match(spec.event_time_field):
        fail("spec.event_time_field", "a dotted field path, or empty for the event's time")
    _validate_window(spec.window, fail)
    if not spec.aggregations or len(spec.aggregations) > MAX_AGGREGATIONS:
        fail("spec.aggregations", f"1 to {MAX_AGGREGATIONS} aggregations")
    names: set[str] = set()
    for i, agg in enumerate(spec.aggregations):
        if agg.function != AggFunction.COUNT and not agg.field:
            fail(f"spec.aggregations[{i}].field", f"{agg.function} needs a field")
        if agg.field and not PATH_RE.match(agg.field):
            fail(f"spec.aggregations[{i}].field", "a dotted field path")
        if agg.name and not PATH_RE.match(agg.name):
            fail(f"spec.aggregations[{i}].name", "letters, digits, _ and -")
        if agg.output in names:
            fail(f"spec.aggregations[{i}].name", f"duplicate result name {agg.output!r}")
        names.add(agg.output)
    for path, value in (
        ("spec.watermark_delay", spec.watermark_delay_ms),
        ("spec.allowed_lateness", spec.allowed_lateness_ms),
        ("spec.idle_timeout", spec.idle_timeout_ms),
    ):
        if value < 0 or value > MAX_SPAN_MS:
            fail(path, "0 to 30 days")
    sink = spec.sink
    if not sink.emit_events and not sink.table:
        fail("spec.sink", "set emit_events and/or table")
    if sink.event_type and not TYPE_RE.match(sink.event_type):
        fail("spec.sink.event_type", "lower-case dotted words (e.g. stream.window.closed)")
    if sink.table and not TABLE_RE.match(sink.table):
        fail("spec.sink.table", "1-63 of lower-case letters, digits and _, starting with a letter")
    if bad:
        raise InvalidArgument("invalid stream job", bad, reason="INVALID_STREAM_JOB")


def _validate_window(w: Window, fail: Any) -> None:
    def span(path: str, value: int) -> bool:
        if value <= 0 or value > MAX_SPAN_MS:
            fail(f"spec.window.{path}", "required: more than 0, at most 30 days")
            return False
        return True

    if w.kind == WindowKind.TUMBLING:
        span("size", w.size_ms)
    elif w.kind == WindowKind.SLIDING:
        if span("size", w.size_ms) and span("slide", w.slide_ms):
            if w.slide_ms > w.size_ms:
                fail("spec.window.slide", "at most the window size")
            elif w.size_ms > w.slide_ms * MAX_WINDOWS_PER_RECORD:
                fail(
                    "spec.window.slide",
                    f"size/slide must be at most {MAX_WINDOWS_PER_RECORD} windows per record",
                )
    elif w.kind == WindowKind.SESSION:
        span("gap", w.gap_ms)
    else:  # pragma: no cover - WindowKind is closed
        fail("spec.window.kind", "tumbling, sliding or session")
