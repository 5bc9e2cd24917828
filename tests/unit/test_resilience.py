"""Retry policy and circuit breaker with a fake clock."""

from __future__ import annotations

import pytest

from datamcp.core.errors import Unavailable
from datamcp.core.resilience import CircuitBreaker, CircuitState, RetryPolicy
from tests.unit.fakes import Clock


def test_backoff_grows_exponentially_under_a_cap_with_jitter() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=0.1, max_delay=1.0)
    for attempt, bound in ((1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (30, 1.0)):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.7  # jitter spreads over the range
    assert policy.exhausted(4) and not policy.exhausted(3)


def test_breaker_opens_after_threshold_and_recovers_through_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker("dep", failure_threshold=3, recovery_time=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert not breaker.allow()
    with pytest.raises(Unavailable) as err:
        breaker.check()
    assert err.value.reason == "CIRCUIT_OPEN"
    assert float(err.value.metadata["retry_after"]) == pytest.approx(10)
    clock.now += 10
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.cancel_trial()  # the trial had nothing to send
    assert breaker.allow()
    breaker.record_failure()  # the trial failed: open again
    assert breaker.state is CircuitState.OPEN and breaker.retry_after() == pytest.approx(10)
    clock.now += 10
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.allow()
