"""Token buckets: per-principal quotas at the entry, and the core's rate limiter.

A bucket refills continuously at ``rate`` tokens per second up to ``burst``.
``try_acquire`` never waits: it answers how long until a token is free, which
the entry turns into ``RetryInfo``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from datamcp.core.errors import ResourceExhausted


class TokenBucket:
    __slots__ = ("_clock", "burst", "rate", "stamp", "tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self.stamp = clock()

    def try_acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` if available and return 0, else return seconds to wait."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= tokens:
            self.tokens -= tokens
            return 0.0
        return (tokens - self.tokens) / self.rate


class KeyedRateLimiter:
    """One bucket per (key, quota name), with per-quota rate/burst.

    Buckets of idle keys are evicted least-recently-used beyond ``max_keys``,
    so a flood of distinct principals cannot grow memory without bound.
    """

    def __init__(
        self,
        default: tuple[float, int],
        overrides: Mapping[str, tuple[float, int]] | None = None,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._default = default
        self._overrides = dict(overrides or {})
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def check(self, key: str, quota: str) -> None:
        """Spend one token of ``key``'s bucket for ``quota``.

        Raises:
            ResourceExhausted: the bucket is empty; ``retry_after`` says for how long.
        """
        name = quota if quota in self._overrides else "*"
        bucket_key = (key, name)
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            rate, burst = self._overrides.get(name, self._default)
            bucket = self._buckets[bucket_key] = TokenBucket(rate, burst, self._clock)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(bucket_key)
        wait = bucket.try_acquire()
        if wait > 0:
            raise ResourceExhausted(
                f"rate limit exceeded for {key} on {name if name != '*' else 'all methods'}: "
                f"{bucket.rate:g} requests/s, burst {bucket.burst:g}; retry in {wait:.3f}s",
                retry_after=wait,
                subject=key,
                quota=name,
                reason="RATE_LIMITED",
            )
