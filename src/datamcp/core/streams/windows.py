"""Keyed event-time windows: assignment, accumulation, watermark and closing.

Model (one final result per window):
- the watermark is the largest event time seen minus the watermark delay
  (an idle timeout may move that event-time clock forward, see
  :meth:`WindowEngine.advance_past_open`);
- a window closes once ``watermark >= end + allowed_lateness``; its result
  is then emitted exactly once and its state dropped;
- a record whose every window is already closed (by that rule) is *late*:
  it is counted, never silently dropped, and optionally published.

Tumbling windows are ``[t - t mod size, +size)``; sliding windows start
every ``slide`` and last ``size``; sessions are ``[t, t + gap)`` per record,
merged while they overlap. All times are integer milliseconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.streams.model import AggFunction, StreamSpec, WindowKind
from datamcp.core.streams.records import Prepared


@dataclass(slots=True)
class WindowState:
    """One open window of one key: record count and per-aggregation
    accumulators ``[n, sum, min, max]`` (n = values seen)."""

    key: str
    start: int
    end: int
    count: int = 0
    accs: list[list[float]] = field(default_factory=list)

    @property
    def id(self) -> tuple[str, int]:
        return (self.key, self.start)

    def to_json(self) -> str:
        return json.dumps({"count": self.count, "accs": self.accs}, separators=(",", ":"))

    @classmethod
    def from_json(cls, key: str, start: int, end: int, text: str) -> WindowState:
        raw = json.loads(text)
        return cls(key, start, end, int(raw["count"]), [list(a) for a in raw["accs"]])

    def add(self, values: tuple[float | None, ...]) -> None:
        self.count += 1
        for acc, value in zip(self.accs, values, strict=True):
            if value is None:
                continue
            if acc[0] == 0:
                acc[:] = [1, value, value, value]
            else:
                acc[0] += 1
                acc[1] += value
                acc[2] = min(acc[2], value)
                acc[3] = max(acc[3], value)

    def merge(self, other: WindowState) -> None:
        self.count += other.count
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        for acc, theirs in zip(self.accs, other.accs, strict=True):
            if theirs[0] == 0:
                continue
            if acc[0] == 0:
                acc[:] = list(theirs)
            else:
                acc[:] = [
                    acc[0] + theirs[0],
                    acc[1] + theirs[1],
                    min(acc[2], theirs[2]),
                    max(acc[3], theirs[3]),
                ]


@dataclass(frozen=True, slots=True)
class WindowResult:
    key: str
    start: int
    end: int
    count: int
    aggregates: dict[str, Any]


def _empty(n: int) -> list[list[float]]:
    return [[0, 0.0, 0.0, 0.0] for _ in range(n)]


class WindowEngine:
    """The open windows of one job and its watermark; tracks what changed
    since the last checkpoint so a checkpoint writes only that."""

    def __init__(
        self,
        spec: StreamSpec,
        windows: list[WindowState] | None = None,
        max_event_ms: int | None = None,
    ) -> None:
        self.spec = spec
        self.max_event_ms = max_event_ms
        self.windows: dict[tuple[str, int], WindowState] = {}
        self._sessions: dict[str, list[WindowState]] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._removed: set[tuple[str, int]] = set()
        for w in windows or ():
            self.windows[w.id] = w
            if spec.window.kind == WindowKind.SESSION:
                self._sessions.setdefault(w.key, []).append(w)

    @property
    def watermark(self) -> int | None:
        if self.max_event_ms is None:
            return None
        return self.max_event_ms - self.spec.watermark_delay_ms

    def _closed(self, end: int) -> bool:
        wm = self.watermark
        return wm is not None and end + self.spec.allowed_lateness_ms <= wm

    def add(self, record: Prepared) -> bool:
        """Add a record to its open windows; False when it is late (no open
        window takes it). The watermark then moves to cover its time."""
        if self.spec.window.kind == WindowKind.SESSION:
            accepted = self._add_session(record)
        else:
            accepted = False
            for start, end in self._assign(record.time_ms):
                if self._closed(end):
                    continue
                wid = (record.key, start)
                window = self.windows.get(wid)
                if window is None:
                    window = WindowState(
                        record.key, start, end, 0, _empty(len(self.spec.aggregations))
                    )
                    self.windows[wid] = window
                window.add(record.values)
                self._dirty.add(wid)
                accepted = True
        if self.max_event_ms is None or record.time_ms > self.max_event_ms:
            self.max_event_ms = record.time_ms
        return accepted

    def _assign(self, t: int) -> list[tuple[int, int]]:
        w = self.spec.window
        if w.kind == WindowKind.TUMBLING:
            start = t - t % w.size_ms
            return [(start, start + w.size_ms)]
        last = t - t % w.slide_ms
        out = []
        start = last
        while start > t - w.size_ms:
            out.append((start, start + w.size_ms))
            start -= w.slide_ms
        return out

    def _add_session(self, record: Prepared) -> bool:
        gap = self.spec.window.gap_ms
        t = record.time_ms
        sessions = self._sessions.setdefault(record.key, [])
        covering = [s for s in sessions if s.start <= t < s.end]
        if not covering and self._closed(t + gap):
            return False
        fresh = WindowState(record.key, t, t + gap, 0, _empty(len(self.spec.aggregations)))
        fresh.add(record.values)
        overlapping = [s for s in sessions if s.start < fresh.end and fresh.start < s.end]
        for s in overlapping:
            sessions.remove(s)
            self._drop(s.id)
            fresh.merge(s)
        sessions.append(fresh)
        self.windows[fresh.id] = fresh
        self._removed.discard(fresh.id)
        self._dirty.add(fresh.id)
        return True

    def _drop(self, wid: tuple[str, int]) -> None:
        self.windows.pop(wid, None)
        self._dirty.discard(wid)
        self._removed.add(wid)

    def advance_past_open(self) -> bool:
        """Move the watermark to the smallest value that closes every open
        window (the idle timeout: a quiet stream acts as if event time had
        passed them). It never moves backwards; False when nothing is open."""
        if not self.windows:
            return False
        target = max(w.end for w in self.windows.values()) + self.spec.allowed_lateness_ms
        clock = target + self.spec.watermark_delay_ms
        if self.max_event_ms is None or clock > self.max_event_ms:
            self.max_event_ms = clock
        return True

    def close(self) -> list[WindowResult]:
        """Close every window the watermark has passed (end + lateness);
        results in (end, start, key) order."""
        done = sorted(
            (w for w in self.windows.values() if self._closed(w.end)),
            key=lambda w: (w.end, w.start, w.key),
        )
        for w in done:
            self._drop(w.id)
            if self.spec.window.kind == WindowKind.SESSION:
                self._sessions[w.key].remove(w)
                if not self._sessions[w.key]:
                    del self._sessions[w.key]
        return [self._result(w) for w in done]

    def _result(self, w: WindowState) -> WindowResult:
        out: dict[str, Any] = {}
        for agg, (n, total, low, high) in zip(self.spec.aggregations, w.accs, strict=True):
            if agg.function == AggFunction.COUNT:
                out[agg.output] = int(n)
            elif n == 0:
                out[agg.output] = None
            elif agg.function == AggFunction.SUM:
                out[agg.output] = total
            elif agg.function == AggFunction.AVG:
                out[agg.output] = total / n
            elif agg.function == AggFunction.MIN:
                out[agg.output] = low
            else:
                out[agg.output] = high
        return WindowResult(w.key, w.start, w.end, w.count, out)

    def changes(self) -> tuple[list[WindowState], list[tuple[str, int]]]:
        """(windows to write, window ids to delete) since the last checkpoint."""
        upserts = [self.windows[wid] for wid in sorted(self._dirty)]
        return upserts, sorted(self._removed - self._dirty)

    def mark_checkpointed(self) -> None:
        self._dirty.clear()
        self._removed.clear()
