"""In-process metrics behind ``GetMetrics``: per-method counts and latency.

Latency goes into a log-bucketed histogram (about 5% relative error) so a
recording is a few integer operations and memory stays constant however
many calls are made. Later services add named sections (agents, pipelines,
memory, infrastructure) by registering a provider.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

_GROWTH = 1.1
_LOG_GROWTH = math.log(_GROWTH)
_MIN_MS = 0.001  # 1 microsecond: bucket 0 holds everything faster


class LatencyHistogram:
    __slots__ = ("buckets", "count", "max_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.max_ms = 0.0

    def record(self, ms: float) -> None:
        index = 0 if ms <= _MIN_MS else int(math.log(ms / _MIN_MS) / _LOG_GROWTH) + 1
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.max_ms = max(self.max_ms, ms)

    def percentile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (0 < q <= 1), in ms."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.max_ms, _MIN_MS * _GROWTH**index)
        return self.max_ms


@dataclass(slots=True)
class MethodStats:
    requests: int = 0
    errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(frozen=True, slots=True)
class MethodSnapshot:
    method: str
    requests: int
    errors: int
    codes: Mapping[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    taken_at: float
    uptime_seconds: float
    methods: tuple[MethodSnapshot, ...]
    sections: Mapping[str, Mapping[str, float]]


SectionProvider = Callable[[], Mapping[str, float]]

#: Sections every snapshot carries, filled by the services as they land.
SECTIONS = ("agents", "pipelines", "memory", "infrastructure")


class MetricsRegistry:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._started = clock()
        self._methods: dict[str, MethodStats] = {}
        self._providers: dict[str, list[SectionProvider]] = {name: [] for name in SECTIONS}

    @property
    def started_at(self) -> float:
        return self._started

    def record_call(self, method: str, code: str, elapsed_ms: float) -> None:
        """Count one finished call; ``code`` is the status name (``OK`` for success)."""
        stats = self._methods.get(method)
        if stats is None:
            stats = self._methods[method] = MethodStats()
        stats.requests += 1
        if code != "OK":
            stats.errors += 1
        stats.codes[code] = stats.codes.get(code, 0) + 1
        stats.latency.record(elapsed_ms)

    def add_section_provider(self, section: str, provider: SectionProvider) -> None:
        if section not in self._providers:
            raise ValueError(f"unknown metrics section {section!r}; use one of {SECTIONS}")
        self._providers[section].append(provider)

    def snapshot(self) -> MetricsSnapshot:
        now = self._clock()
        methods = tuple(
            MethodSnapshot(
                method=name,
                requests=s.requests,
                errors=s.errors,
                codes=dict(s.codes),
                p50_ms=s.latency.percentile(0.50),
                p90_ms=s.latency.percentile(0.90),
                p99_ms=s.latency.percentile(0.99),
                max_ms=s.latency.max_ms,
            )
            for name, s in sorted(self._methods.items())
        )
        sections: dict[str, dict[str, float]] = {}
        for name, providers in self._providers.items():
            values: dict[str, float] = {}
            for provider in providers:
                values.update(provider())
            sections[name] = values
        return MetricsSnapshot(now, now - self._started, methods, sections)
