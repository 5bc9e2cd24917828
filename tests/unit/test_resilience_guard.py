"""CallGuard: retries, circuit breaker, rate limit and timeouts, on fake time
(except the per-attempt timeout cases, which need the real event loop)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from datamcp.core.errors import ResourceExhausted, Unavailable
from datamcp.core.ratelimit import TokenBucket
from datamcp.core.resilience import CallGuard, CircuitBreaker, CircuitState, RetryPolicy
from tests.unit.fakes import Clock


class FakeTime(Clock):
    """A clock whose ``sleep`` moves it forward and records the waits."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


class Broken(Exception):
    pass


def script(*outcomes: object) -> tuple[Callable[[], Awaitable[object]], list[int]]:
    """A call that raises or returns ``outcomes`` in turn; counts its calls."""
    calls = [0]

    async def fn() -> object:
        outcome = outcomes[min(calls[0], len(outcomes) - 1)]
        calls[0] += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return fn, calls


def guard(t: FakeTime, **kwargs: object) -> CallGuard:
    options: dict[str, object] = {
        "retry": RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=1.0),
        "breaker": CircuitBreaker("dep", failure_threshold=10, recovery_time=5, clock=t),
        "retry_on": Flaky,
        "clock": t,
        "sleep": t.sleep,
    }
    options.update(kwargs)
    return CallGuard("dep", **options)  # type: ignore[arg-type]


async def test_retryable_failures_are_retried_with_bounded_backoff() -> None:
    t = FakeTime()
    fn, calls = script(Flaky(), Flaky(), "ok")
    assert await guard(t).call(fn, timeout=10) == "ok"
    assert calls[0] == 3
    assert len(t.sleeps) == 2
    assert 0 <= t.sleeps[0] <= 0.1 and 0 <= t.sleeps[1] <= 0.2


async def test_non_retryable_failure_is_raised_at_once() -> None:
    t = FakeTime()
    fn, calls = script(Broken(), "ok")
    g = guard(t)
    with pytest.raises(Broken):
        await g.call(fn, timeout=10)
    assert calls[0] == 1 and t.sleeps == []
    assert g.breaker.state is CircuitState.CLOSED


async def test_last_failure_is_raised_when_attempts_run_out() -> None:
    t = FakeTime()
    fn, calls = script(Flaky())
    with pytest.raises(Flaky) as err:
        await guard(t).call(fn, timeout=10)
    assert calls[0] == 4
    assert any("gave up after 4 attempt" in note for note in err.value.__notes__)


async def test_backoff_that_would_pass_the_deadline_is_not_waited() -> None:
    t = FakeTime()
    fn, calls = script(Flaky(retry_after=3.0), "ok")
    start = t.now
    with pytest.raises(Flaky):
        await guard(t).call(fn, timeout=2.0)
    assert calls[0] == 1 and t.sleeps == [] and t.now == start


async def test_retry_after_hint_is_honoured_and_capped() -> None:
    t = FakeTime()
    fn, _ = script(Flaky(retry_after=0.7), Flaky(retry_after=600), "ok")
    assert await guard(t, max_retry_after=1.5).call(fn, timeout=60) == "ok"
    assert t.sleeps == [0.7, 1.5]


async def test_circuit_opens_then_fails_fast_then_half_open_trial_closes_it() -> None:
    t = FakeTime()
    breaker = CircuitBreaker("dep", failure_threshold=2, recovery_time=5, clock=t)
    g = guard(t, breaker=breaker, retry=RetryPolicy(max_attempts=2, base_delay=0.01))
    fn, calls = script(Flaky(), Flaky(), "ok")
    with pytest.raises(Flaky):
        await g.call(fn, timeout=10)
    assert breaker.state is CircuitState.OPEN and calls[0] == 2

    with pytest.raises(Unavailable) as err:
        await g.call(fn, timeout=10)
    assert err.value.reason == "CIRCUIT_OPEN" and calls[0] == 2  # not called

    t.now += 5
    assert await g.call(fn, timeout=10) == "ok"
    assert g.breaker.state is CircuitState.CLOSED


async def test_circuit_opening_mid_call_stops_the_retries() -> None:
    t = FakeTime()
    breaker = CircuitBreaker("dep", failure_threshold=2, recovery_time=5, clock=t)
    fn, calls = script(Flaky())
    with pytest.raises(Unavailable) as err:
        await guard(t, breaker=breaker).call(fn, timeout=10)
    assert calls[0] == 2
    assert isinstance(err.value.__cause__, Flaky)


async def test_non_retryable_answer_resets_the_failure_count() -> None:
    t = FakeTime()
    breaker = CircuitBreaker("dep", failure_threshold=2, recovery_time=5, clock=t)
    g = guard(t, breaker=breaker, retry=RetryPolicy(max_attempts=1))
    for outcome in (Flaky(), Broken(), Flaky()):
        fn, _ = script(outcome)
        with pytest.raises(type(outcome)):
            await g.call(fn, timeout=10)
    assert breaker.state is CircuitState.CLOSED


async def test_rate_limiter_waits_for_tokens() -> None:
    t = FakeTime()
    g = guard(t, limiter=TokenBucket(rate=2, burst=1, clock=t))
    fn, calls = script("ok")
    for _ in range(3):
        assert await g.call(fn, timeout=10) == "ok"
    assert calls[0] == 3
    assert t.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]


async def test_rate_limiter_refuses_when_the_token_comes_too_late() -> None:
    t = FakeTime()
    g = guard(t, limiter=TokenBucket(rate=1, burst=1, clock=t))
    fn, calls = script("ok")
    await g.call(fn, timeout=10)
    with pytest.raises(ResourceExhausted) as err:
        await g.call(fn, timeout=0.5)
    assert err.value.reason == "RATE_LIMITED"
    assert err.value.retry_after == pytest.approx(1.0)
    assert calls[0] == 1 and t.sleeps == []


async def test_refused_half_open_trial_is_handed_back() -> None:
    t = FakeTime()
    breaker = CircuitBreaker("dep", failure_threshold=1, recovery_time=5, clock=t)
    limiter = TokenBucket(rate=1, burst=1, clock=t)
    g = guard(t, breaker=breaker, limiter=limiter, retry=RetryPolicy(max_attempts=1))
    fail, _ = script(Flaky())
    with pytest.raises(Flaky):
        await g.call(fail, timeout=10)
    t.now += 5
    limiter.tokens = 0.0
    limiter.stamp = t.now
    ok, _ = script("ok")
    with pytest.raises(ResourceExhausted):
        await g.call(ok, timeout=0.1)  # took the trial, then found no token
    assert breaker.state is CircuitState.HALF_OPEN and breaker.allow()


async def test_attempt_timeout_is_retried_then_raised() -> None:
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(5)
        return "late"

    g = CallGuard(
        "dep",
        attempt_timeout=0.05,
        retry=RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.001),
    )
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await g.call(slow, timeout=5)
    assert calls == 3
    assert time.monotonic() - started < 1.0


async def test_overall_timeout_bounds_a_slow_attempt() -> None:
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    g = CallGuard("dep", attempt_timeout=10, retry=RetryPolicy(max_attempts=5))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await g.call(slow, timeout=0.1)
    assert time.monotonic() - started < 1.0


async def test_cancelled_call_hands_back_the_half_open_trial() -> None:
    breaker = CircuitBreaker("dep", failure_threshold=1, recovery_time=0.0)
    breaker.record_failure()
    assert breaker.state is CircuitState.HALF_OPEN
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(5)

    g = CallGuard("dep", breaker=breaker)
    task = asyncio.create_task(g.call(hang, timeout=5))
    await asyncio.wait_for(started.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.allow()  # the trial is free again


def test_retry_rule_may_be_a_predicate() -> None:
    g = CallGuard("dep", retry_on=lambda exc: "again" in str(exc))
    assert g.transient(RuntimeError("try again"))
    assert not g.transient(RuntimeError("no"))
    assert g.transient(TimeoutError())
    assert CallGuard("dep").transient(ConnectionRefusedError())
    assert not CallGuard("dep").transient(ValueError())


async def test_retry_if_stops_retries_but_still_counts_the_failure() -> None:
    t = FakeTime()
    breaker = CircuitBreaker("dep", failure_threshold=1, recovery_time=5, clock=t)
    fn, calls = script(Flaky(), "ok")
    with pytest.raises(Flaky):
        await guard(t, breaker=breaker).call(fn, timeout=10, retry_if=lambda exc: False)
    assert calls[0] == 1 and breaker.state is CircuitState.OPEN
