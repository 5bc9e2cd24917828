"""Token buckets: per-principal quotas at the entry, and the core's rate limiter.

A bucket refills continuously at ``rate`` tokens per second up to ``burst``.
``try_acquire`` never waits: it answers how long until a token is free, which
the entry turns into ``RetryInfo``.

Across replicas (``KeyedRateLimiter.share``) every process keeps the same
buckets: what it spends it announces every ``SHARE_INTERVAL`` over the
processes' signals, and what the others announce it takes out of its own
buckets (a bucket may go into debt, at most one burst deep). Over any long
window the mesh admits what one process would (rate x time + burst); within
one interval the others' spending is not seen yet, so a burst can overshoot
by about ``(replicas - 1) x rate x SHARE_INTERVAL``. A lost signal (a
reconnect) loses that interval's spending: an approximation, documented in
docs/configuration.md, that costs no database round trip per call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from datamcp.core.background import cancel_and_wait
from datamcp.core.errors import ResourceExhausted
from datamcp.core.signals import Signals

log = logging.getLogger(__name__)

#: Seconds between a process's announcements of what it spent.
SHARE_INTERVAL = 0.1
#: Largest announcement (the signal payload limit is ~8 kB).
_MAX_REPORT = 6000


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

    def debit(self, tokens: float) -> None:
        """Take ``tokens`` spent elsewhere (the bucket may owe up to one burst)."""
        now = self._clock()
        refilled = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.tokens = max(-self.burst, refilled - tokens)
        self.stamp = now


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
        #: Tokens spent here since the last announcement (when shared).
        self._spent: dict[tuple[str, str], int] | None = None
        self._signals: Signals | None = None
        self._sharer: asyncio.Task[None] | None = None

    def check(self, key: str, quota: str) -> None:
        """Spend one token of ``key``'s bucket for ``quota``.

        Raises:
            ResourceExhausted: the bucket is empty; ``retry_after`` says for how long.
        """
        name = quota if quota in self._overrides else "*"
        bucket_key = (key, name)
        bucket = self._bucket(bucket_key)
        wait = bucket.try_acquire()
        if wait == 0 and self._spent is not None:
            self._spent[bucket_key] = self._spent.get(bucket_key, 0) + 1
        if wait > 0:
            raise ResourceExhausted(
                f"rate limit exceeded for {key} on {name if name != '*' else 'all methods'}: "
                f"{bucket.rate:g} requests/s, burst {bucket.burst:g}; retry in {wait:.3f}s",
                retry_after=wait,
                subject=key,
                quota=name,
                reason="RATE_LIMITED",
            )

    def _bucket(self, bucket_key: tuple[str, str]) -> TokenBucket:
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            rate, burst = self._overrides.get(bucket_key[1], self._default)
            bucket = self._buckets[bucket_key] = TokenBucket(rate, burst, self._clock)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(bucket_key)
        return bucket

    # --- sharing quotas with the other processes ------------------------------------

    async def share(self, signals: Signals) -> None:
        """Keep these buckets in step with the other processes' (see the module doc)."""
        if self._sharer is not None:
            return
        self._signals = signals
        self._spent = {}
        signals.subscribe("quota", self._spent_elsewhere)
        self._sharer = asyncio.create_task(self._announce_loop(), name="quota-sharing")

    async def close(self) -> None:
        await cancel_and_wait(self._sharer)
        self._sharer = None

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            self.announce()

    def announce(self) -> None:
        """Tell the other processes what was spent here since the last time."""
        if not self._spent or self._signals is None:
            return
        spent, self._spent = self._spent, {}
        report: list[list[object]] = []
        size = 0
        for (key, name), count in spent.items():
            entry: list[object] = [key, name, count]
            size += len(key) + len(name) + 16
            report.append(entry)
            if size > _MAX_REPORT:
                self._signals.send("quota", json.dumps(report, separators=(",", ":")))
                report, size = [], 0
        if report:
            self._signals.send("quota", json.dumps(report, separators=(",", ":")))

    def _spent_elsewhere(self, payload: str) -> None:
        if not payload:  # a reconnect: what was missed is lost (the approximation)
            return
        try:
            report = json.loads(payload)
            for key, name, count in report:
                if isinstance(count, int) and count > 0 and isinstance(key, str):
                    self._bucket((key, str(name))).debit(float(count))
        except (ValueError, TypeError):
            log.warning("ignoring a malformed quota report")
