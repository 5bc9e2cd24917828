"""Component health: checks, the periodic monitor and the per-service verdicts.

Each component (database, event bus, external dependencies, ...) has a check
that answers HEALTHY, DEGRADED or UNHEALTHY with details. The monitor runs
all checks concurrently on an interval, each bounded by a timeout, keeps the
latest report, and tells listeners when anything changed. A service is
serving while none of the components it needs is UNHEALTHY; a non-critical
component being down only degrades the overall report.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from datamcp.core.background import cancel_and_wait, wait_at_most

log = logging.getLogger(__name__)


class Status(enum.IntEnum):
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    details: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)


class HealthCheck(Protocol):
    """One component's probe. ``critical`` components take the server down with them."""

    name: str
    critical: bool

    async def check(self) -> CheckResult: ...


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    name: str
    status: Status
    details: str
    latency_ms: float
    checked_at: float
    critical: bool
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: Status
    components: tuple[ComponentHealth, ...]
    services: Mapping[str, bool]
    generated_at: float
    uptime_seconds: float
    version: str

    def same_state(self, other: HealthReport | None) -> bool:
        """True when statuses and details match (times and latencies ignored)."""
        if other is None:
            return False

        def key(r: HealthReport) -> object:
            return (
                r.status,
                tuple((c.name, c.status, c.details) for c in r.components),
                tuple(sorted(r.services.items())),
            )

        return key(self) == key(other)


class FunctionCheck:
    """A check built from a coroutine function, for simple components."""

    def __init__(
        self, name: str, probe: Callable[[], Awaitable[CheckResult]], *, critical: bool = True
    ) -> None:
        self.name = name
        self.critical = critical
        self._probe = probe

    async def check(self) -> CheckResult:
        return await self._probe()


Listener = Callable[[HealthReport], Awaitable[None]]


class HealthMonitor:
    """Runs checks on an interval and publishes the report when it changes.

    Args:
        checks: the components.
        interval: seconds between evaluations.
        timeout: seconds one check may take before it counts as UNHEALTHY.
    """

    def __init__(
        self,
        checks: Sequence[HealthCheck],
        *,
        interval: float,
        timeout: float,
        version: str,
    ) -> None:
        self._checks = list(checks)
        self._services: dict[str, tuple[str, ...]] = {}
        self._interval = interval
        self._timeout = timeout
        self._version = version
        self._started = time.time()
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()
        self._report: HealthReport | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def report(self) -> HealthReport | None:
        return self._report

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(self._services)

    def register_service(self, name: str, needs: Iterable[str]) -> None:
        """Declare a service and the components it needs to serve.

        The overall server ("") needs every critical component.
        """
        self._services[name] = tuple(needs)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def evaluate(self) -> HealthReport:
        """Run every check now and publish the result if it changed."""
        async with self._lock:
            components = await asyncio.gather(*(self._run(c) for c in self._checks))
            report = self._summarise(components)
            changed = not report.same_state(self._report)
            self._report = report
        if changed:
            log.info(
                "health changed",
                extra={
                    "health": report.status.name,
                    "components": {c.name: c.status.name for c in components},
                },
            )
            await self._publish(report)
        return report

    async def shutdown(self) -> HealthReport:
        """Stop checking and publish a final report: nothing is serving any more."""
        await self.stop()
        async with self._lock:
            now = time.time()
            report = HealthReport(
                status=Status.UNHEALTHY,
                components=(
                    ComponentHealth("server", Status.UNHEALTHY, "shutting down", 0.0, now, True),
                ),
                services=dict.fromkeys(("", *self._services), False),
                generated_at=now,
                uptime_seconds=now - self._started,
                version=self._version,
            )
            self._report = report
        await self._publish(report)
        return report

    async def _publish(self, report: HealthReport) -> None:
        for listener in self._listeners:
            try:
                await listener(report)
            except Exception:
                log.exception("health listener failed")
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self) -> HealthReport:
        """Return the next report that differs from the current one."""
        await self._changed.wait()
        assert self._report is not None
        return self._report

    def start(self) -> None:
        if self._task is None:
            self._stopping = asyncio.Event()
            self._task = asyncio.create_task(self._loop(), name="health-monitor")

    async def stop(self) -> None:
        """Stop after the round in progress: a check (the database's writes a
        heartbeat) is not cut off mid-statement unless it outlives its own
        timeout."""
        self._stopping.set()
        if self._task is not None:
            _, running = await asyncio.wait({self._task}, timeout=self._timeout + 1.0)
            await cancel_and_wait(*running)
        self._task = None

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.evaluate()
            except Exception:  # a bug in a check must not stop health reporting
                log.exception("health evaluation failed")
            await wait_at_most(self._stopping, self._interval)

    async def _run(self, check: HealthCheck) -> ComponentHealth:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(check.check(), self._timeout)
        except TimeoutError:
            result = CheckResult(Status.UNHEALTHY, f"check timed out after {self._timeout:g}s")
        except Exception as exc:
            result = CheckResult(Status.UNHEALTHY, f"{type(exc).__name__}: {exc}")
        return ComponentHealth(
            name=check.name,
            status=result.status,
            details=result.details,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            checked_at=time.time(),
            critical=check.critical,
            attributes=result.attributes,
        )

    def _summarise(self, components: Sequence[ComponentHealth]) -> HealthReport:
        by_name = {c.name: c for c in components}
        critical_down = any(c.critical and c.status is Status.UNHEALTHY for c in components)
        if critical_down:
            overall = Status.UNHEALTHY
        elif any(c.status is not Status.HEALTHY for c in components):
            overall = Status.DEGRADED
        else:
            overall = Status.HEALTHY
        services = {"": not critical_down}
        for service, needs in self._services.items():
            services[service] = all(
                by_name[n].status is not Status.UNHEALTHY for n in needs if n in by_name
            )
        now = time.time()
        return HealthReport(
            status=overall,
            components=tuple(components),
            services=services,
            generated_at=now,
            uptime_seconds=now - self._started,
            version=self._version,
        )
