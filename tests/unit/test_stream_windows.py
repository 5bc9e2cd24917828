"""Window assignment, aggregation, watermark and lateness of the stream engine."""

from __future__ import annotations

from typing import Any

import pytest

from datamcp.core.errors import InvalidArgument
from datamcp.core.streams.model import (
    AggFunction,
    Aggregation,
    EventSource,
    Sink,
    StreamSpec,
    Window,
    WindowKind,
    validate,
)
from datamcp.core.streams.records import Prepared, RecordReader, Rejection
from datamcp.core.streams.windows import WindowEngine, WindowResult, WindowState

AGGS = (
    Aggregation(AggFunction.COUNT),
    Aggregation(AggFunction.SUM, "v"),
    Aggregation(AggFunction.AVG, "v"),
    Aggregation(AggFunction.MIN, "v"),
    Aggregation(AggFunction.MAX, "v"),
)


def spec(window: Window, *, delay: int = 0, lateness: int = 0) -> StreamSpec:
    return StreamSpec(
        window=window,
        aggregations=AGGS,
        sink=Sink(),
        key_fields=("k",),
        event_time_field="t",
        watermark_delay_ms=delay,
        allowed_lateness_ms=lateness,
    )


def feed(engine: WindowEngine, records: list[dict[str, Any]]) -> tuple[list[WindowResult], int]:
    reader = RecordReader(engine.spec)
    late = 0
    out: list[WindowResult] = []
    for r in records:
        p = reader.read(r, 0.0)
        assert isinstance(p, Prepared), p
        if not engine.add(p):
            late += 1
        out += engine.close()
    return out, late


def summary(results: list[WindowResult]) -> list[tuple[str, float, float, dict[str, Any]]]:
    return [(r.key, r.start / 1000, r.end / 1000, r.aggregates) for r in results]


def aggs(n: int, total: float, low: float, high: float) -> dict[str, Any]:
    return {"count": n, "sum_v": total, "avg_v": total / n, "min_v": low, "max_v": high}


def test_tumbling_windows_per_key_with_exact_aggregates() -> None:
    engine = WindowEngine(spec(Window(WindowKind.TUMBLING, size_ms=10_000)))
    results, late = feed(
        engine,
        [
            {"k": "a", "t": 1, "v": 1},
            {"k": "b", "t": 2, "v": 10},
            {"k": "a", "t": 9.999, "v": 3},
            {"k": "a", "t": 10, "v": 5},  # next window; watermark 10 closes [0, 10)
            {"k": "b", "t": 25, "v": 7},  # closes [10, 20)
        ],
    )
    assert late == 0
    assert summary(results) == [
        ('["a"]', 0, 10, aggs(2, 4, 1, 3)),
        ('["b"]', 0, 10, aggs(1, 10, 10, 10)),
        ('["a"]', 10, 20, aggs(1, 5, 5, 5)),
    ]
    assert list(engine.windows) == [('["b"]', 20_000)]


def test_sliding_windows_put_a_record_in_every_window_covering_it() -> None:
    engine = WindowEngine(spec(Window(WindowKind.SLIDING, size_ms=10_000, slide_ms=5_000)))
    results, _ = feed(
        engine,
        [
            {"k": "a", "t": 3, "v": 1},  # [-5,5) [0,10)
            {"k": "a", "t": 7, "v": 2},  # [0,10) [5,15)
            {"k": "a", "t": 12, "v": 4},  # [5,15) [10,20); wm 12 closes [-5,5)
            {"k": "a", "t": 30, "v": 8},  # closes [0,10) [5,15) [10,20)
        ],
    )
    assert summary(results) == [
        ('["a"]', -5, 5, aggs(1, 1, 1, 1)),
        ('["a"]', 0, 10, aggs(2, 3, 1, 2)),
        ('["a"]', 5, 15, aggs(2, 6, 2, 4)),
        ('["a"]', 10, 20, aggs(1, 4, 4, 4)),
    ]


def test_session_windows_merge_while_gaps_are_short() -> None:
    engine = WindowEngine(spec(Window(WindowKind.SESSION, gap_ms=5_000), delay=10_000))
    results, _ = feed(
        engine,
        [
            {"k": "a", "t": 0, "v": 1},
            {"k": "a", "t": 8, "v": 2},  # new session: 0+5 <= 8
            {"k": "a", "t": 4, "v": 3},  # bridges [0,5) and [8,13): one session [0,13)
            {"k": "b", "t": 6, "v": 9},
            {"k": "a", "t": 30, "v": 4},  # wm 20: closes b[6,11) and a[0,13)
        ],
    )
    assert summary(results) == [
        ('["b"]', 6, 11, aggs(1, 9, 9, 9)),
        ('["a"]', 0, 13, aggs(3, 6, 1, 3)),
    ]
    assert [(w.start, w.end) for w in engine.windows.values()] == [(30_000, 35_000)]


def test_out_of_order_within_lateness_is_included_and_beyond_is_late() -> None:
    engine = WindowEngine(
        spec(Window(WindowKind.TUMBLING, size_ms=10_000), delay=2_000, lateness=3_000)
    )
    results, late = feed(
        engine,
        [
            {"k": "a", "t": 5, "v": 1},
            {"k": "a", "t": 14, "v": 1},  # wm 12: [0,10) stays open until wm >= 13
            {"k": "a", "t": 2, "v": 5},  # out of order, within lateness: included
            {"k": "a", "t": 15, "v": 1},  # wm 13: [0,10) closes
            {"k": "a", "t": 9, "v": 100},  # its only window has closed: late
        ],
    )
    assert late == 1
    assert summary(results) == [('["a"]', 0, 10, aggs(2, 6, 1, 5))]
    assert engine.watermark == 13_000


def test_watermark_alone_closes_windows_of_other_keys() -> None:
    engine = WindowEngine(spec(Window(WindowKind.TUMBLING, size_ms=1_000)))
    results, _ = feed(engine, [{"k": "quiet", "t": 0.5, "v": 1}, {"k": "busy", "t": 1.0, "v": 1}])
    assert summary(results) == [('["quiet"]', 0, 1, aggs(1, 1, 1, 1))]


def test_changes_track_written_and_removed_windows_and_restore() -> None:
    s = spec(Window(WindowKind.SESSION, gap_ms=5_000), delay=10_000)
    engine = WindowEngine(s)
    feed(engine, [{"k": "a", "t": 0, "v": 1}, {"k": "a", "t": 8, "v": 2}])
    upserts, deletes = engine.changes()
    assert [(u.start, u.end) for u in upserts] == [(0, 5_000), (8_000, 13_000)]
    engine.mark_checkpointed()
    feed(engine, [{"k": "a", "t": 4, "v": 3}])
    upserts, deletes = engine.changes()
    assert [(u.start, u.end, u.count) for u in upserts] == [(0, 13_000, 3)]
    assert deletes == [('["a"]', 8_000)]
    # A restored engine continues exactly where the checkpoint was.
    restored = WindowEngine(
        s,
        [WindowState.from_json(u.key, u.start, u.end, u.to_json()) for u in upserts],
        engine.max_event_ms,
    )
    results, _ = feed(restored, [{"k": "a", "t": 40, "v": 0}])
    assert summary(results) == [('["a"]', 0, 13, aggs(3, 6, 1, 3))]


def test_count_of_a_field_skips_nulls_and_empty_numeric_aggregates_are_null() -> None:
    s = StreamSpec(
        window=Window(WindowKind.TUMBLING, size_ms=1_000),
        aggregations=(
            Aggregation(AggFunction.COUNT, "v", "seen"),
            Aggregation(AggFunction.SUM, "v"),
            Aggregation(AggFunction.COUNT),
        ),
        sink=Sink(),
        event_time_field="t",
    )
    engine = WindowEngine(s)
    results, _ = feed(engine, [{"t": 0}, {"t": 0.1, "v": None}, {"t": 5}])
    assert results[0].aggregates == {"seen": 0, "sum_v": None, "count": 2}


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"k": "a", "v": 1}, "t"),
        ({"k": "a", "t": "yesterday", "v": 1}, "t"),
        ({"k": "a", "t": True, "v": 1}, "t"),
        ({"t": 1, "v": 1}, "k"),
        ({"k": "a", "t": 1, "v": "12"}, "v"),
        ({"k": "a", "t": 1, "v": False}, "v"),
        ([1, 2], ""),
    ],
)
def test_reader_rejects_bad_records_with_the_field(record: Any, field: str) -> None:
    result = RecordReader(spec(Window(WindowKind.TUMBLING, size_ms=1))).read(record, 0.0)
    assert isinstance(result, Rejection)
    assert result.field == field


def test_reader_parses_rfc3339_and_nested_paths() -> None:
    s = StreamSpec(
        window=Window(WindowKind.TUMBLING, size_ms=1_000),
        aggregations=(Aggregation(AggFunction.SUM, "m.v"),),
        sink=Sink(),
        key_fields=("d.id",),
        event_time_field="at",
    )
    p = RecordReader(s).read({"at": "2024-01-01T00:00:01.5Z", "d": {"id": 7}, "m": {"v": 2}}, 0)
    assert p == Prepared("[7]", 1_704_067_201_500, (2.0,))


def test_validation_names_every_bad_field() -> None:
    bad = StreamSpec(
        window=Window(WindowKind.SLIDING, size_ms=1_000, slide_ms=2_000),
        aggregations=(Aggregation(AggFunction.SUM), Aggregation(AggFunction.COUNT)),
        sink=Sink(emit_events=False, table="Bad-Name"),
        source=EventSource(types=("Not A Type",)),
        key_fields=("a..b",),
        allowed_lateness_ms=-1,
        idle_timeout_ms=31 * 86_400_000,
    )
    with pytest.raises(InvalidArgument) as info:
        validate("", bad)
    fields = {v.field for v in info.value.violations}
    assert fields == {
        "job.name",
        "job.spec.events.types[0]",
        "job.spec.key_fields[0]",
        "job.spec.window.slide",
        "job.spec.aggregations[0].field",
        "job.spec.allowed_lateness",
        "job.spec.idle_timeout",
        "job.spec.sink.table",
    }


@pytest.mark.parametrize(
    "window",
    [
        Window(WindowKind.TUMBLING, size_ms=10_000),
        Window(WindowKind.SLIDING, size_ms=10_000, slide_ms=5_000),
        Window(WindowKind.SESSION, gap_ms=5_000),
    ],
)
def test_advance_past_open_closes_every_open_window_and_nothing_more(window: Window) -> None:
    engine = WindowEngine(spec(window, delay=100_000, lateness=2_000))
    results, _ = feed(engine, [{"k": "a", "t": 1, "v": 1}, {"k": "b", "t": 12, "v": 2}])
    assert results == [] and engine.windows
    last_end = max(w.end for w in engine.windows.values())
    assert engine.advance_past_open()
    # The smallest watermark closing them all: the last end plus the lateness.
    assert engine.watermark == last_end + 2_000
    closed = engine.close()
    assert engine.windows == {}
    assert sum(r.count for r in closed) == (4 if window.kind == WindowKind.SLIDING else 2)
    assert not engine.advance_past_open()  # nothing open: the clock stays
    assert engine.watermark == last_end + 2_000
    # A record for a flushed window is late; a later one opens a new window.
    reader = RecordReader(engine.spec)
    old = reader.read({"k": "a", "t": 2, "v": 1}, 0.0)
    assert isinstance(old, Prepared) and not engine.add(old)
    fresh = reader.read({"k": "a", "t": 500, "v": 1}, 0.0)
    assert isinstance(fresh, Prepared) and engine.add(fresh)
