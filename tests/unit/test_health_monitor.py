"""The health monitor's verdicts, timeouts and change notifications."""

from __future__ import annotations

import asyncio

from datamcp.core.health import CheckResult, FunctionCheck, HealthMonitor, HealthReport, Status


class Switch:
    def __init__(self, status: Status = Status.HEALTHY) -> None:
        self.status = status

    async def __call__(self) -> CheckResult:
        return CheckResult(self.status, self.status.name.lower())


def monitor(*checks: FunctionCheck, timeout: float = 1.0) -> HealthMonitor:
    m = HealthMonitor(list(checks), interval=0.01, timeout=timeout, version="t")
    m.register_service("svc.A", ["db"])
    m.register_service("svc.B", ["cache"])
    return m


async def test_critical_down_stops_server_and_dependent_services_only() -> None:
    db, cache = Switch(), Switch()
    m = monitor(FunctionCheck("db", db), FunctionCheck("cache", cache, critical=False))
    assert (await m.evaluate()).status is Status.HEALTHY
    cache.status = Status.UNHEALTHY
    report = await m.evaluate()
    assert report.status is Status.DEGRADED
    assert report.services == {"": True, "svc.A": True, "svc.B": False}
    db.status = Status.UNHEALTHY
    report = await m.evaluate()
    assert report.status is Status.UNHEALTHY
    assert report.services == {"": False, "svc.A": False, "svc.B": False}


async def test_slow_or_crashing_checks_are_unhealthy_not_fatal() -> None:
    async def slow() -> CheckResult:
        await asyncio.sleep(5)
        return CheckResult(Status.HEALTHY)

    async def crash() -> CheckResult:
        raise RuntimeError("boom")

    m = monitor(FunctionCheck("db", slow), FunctionCheck("cache", crash), timeout=0.05)
    report = await m.evaluate()
    by_name = {c.name: c for c in report.components}
    assert "timed out" in by_name["db"].details
    assert "RuntimeError: boom" in by_name["cache"].details


async def test_listeners_hear_changes_only() -> None:
    db = Switch()
    m = monitor(FunctionCheck("db", db))
    heard: list[Status] = []

    async def listen(report: HealthReport) -> None:
        heard.append(report.status)

    m.add_listener(listen)
    await m.evaluate()
    await m.evaluate()
    waiter = asyncio.create_task(m.wait_for_change())
    db.status = Status.DEGRADED
    await m.evaluate()
    assert (await asyncio.wait_for(waiter, 1)).status is Status.DEGRADED
    await m.shutdown()
    assert heard == [Status.HEALTHY, Status.DEGRADED, Status.UNHEALTHY]


async def test_periodic_loop_notices_changes() -> None:
    db = Switch()
    m = monitor(FunctionCheck("db", db))
    m.start()
    try:
        await asyncio.sleep(0.05)
        db.status = Status.UNHEALTHY
        report = await asyncio.wait_for(m.wait_for_change(), 1)
        assert report.services[""] is False
    finally:
        await m.stop()
