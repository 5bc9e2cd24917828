"""Token buckets with a fake clock."""

from __future__ import annotations

import pytest

from datamcp.core.errors import ResourceExhausted
from datamcp.core.ratelimit import KeyedRateLimiter, TokenBucket
from tests.unit.fakes import Clock


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.try_acquire() == 0.0
    clock.now += 100
    assert [bucket.try_acquire() for _ in range(4)][-1] > 0  # capped at burst


def test_keyed_limiter_separates_keys_and_method_overrides() -> None:
    clock = Clock()
    limiter = KeyedRateLimiter((1.0, 1), {"/s/Slow": (0.1, 1)}, clock=clock)
    limiter.check("a", "/s/Fast")
    limiter.check("b", "/s/Fast")
    limiter.check("a", "/s/Slow")  # separate bucket
    with pytest.raises(ResourceExhausted) as err:
        limiter.check("a", "/s/Other")  # shares the default bucket with /s/Fast
    assert err.value.retry_after == pytest.approx(1.0)
    assert err.value.subject == "a"
    with pytest.raises(ResourceExhausted) as slow:
        limiter.check("a", "/s/Slow")
    assert slow.value.retry_after == pytest.approx(10.0)


def test_idle_keys_are_evicted_beyond_the_bound() -> None:
    limiter = KeyedRateLimiter((1.0, 1), max_keys=2, clock=Clock())
    for key in ("a", "b", "c"):
        limiter.check(key, "/m")
    limiter.check("a", "/m")  # "a" was evicted, so it has a fresh bucket
