"""A call guard: rate limit, circuit breaker, retries and timeouts around one
async call to a dependency.

Per attempt, in order: the circuit must let the call out (else fail fast),
a rate-limit token is taken (waiting for one only as long as the overall
budget allows), then the call runs under the per-attempt timeout. Failures
the ``retry_on`` rule calls transient (and attempt timeouts) count against
the breaker and are retried with exponential backoff and full jitter, or
after the failure's own ``retry_after`` hint when it gives a longer one.
Other failures mean the dependency answered: they reset the breaker and are
raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from datamcp.core.errors import ResourceExhausted, Unavailable
from datamcp.core.ratelimit import TokenBucket
from datamcp.core.resilience.backoff import RetryPolicy
from datamcp.core.resilience.circuit import CircuitBreaker

T = TypeVar("T")

log = logging.getLogger(__name__)

RetryRule = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _hint(exc: BaseException) -> float | None:
    """The ``retry_after`` attribute of a failure, when it carries one."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


class CallGuard:
    """Guards calls to one dependency; share one instance per dependency.

    Args:
        name: the dependency, for messages and logs.
        limiter: token bucket spent once per attempt (``None`` = no limit).
        breaker: circuit breaker (``None`` = a default one named ``name``).
        retry: attempts and backoff between them.
        attempt_timeout: seconds one attempt may take (``None`` = only the
            overall ``timeout`` of :meth:`call` bounds it).
        retry_on: exception type(s) or predicate saying which failures are
            transient: the dependency failed and another attempt may succeed
            (default ``OSError``: connection errors). :class:`TimeoutError`
            always is.
        retry_after: reads a failure's wait hint in seconds (default: its
            ``retry_after`` attribute); hints are capped at ``max_retry_after``.
        clock, sleep: time sources, replaceable in tests.

    Raises from :meth:`call`:
        Unavailable: reason ``CIRCUIT_OPEN``; ``metadata["retry_after"]``.
        ResourceExhausted: reason ``RATE_LIMITED``; no token within the budget.
        TimeoutError: the last attempt timed out, or no time was left to try.
        anything ``fn`` raised: not transient (or not to be retried), or the
            last transient failure once attempts or time ran out (with a note
            saying so).
    """

    def __init__(
        self,
        name: str,
        *,
        limiter: TokenBucket | None = None,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
        attempt_timeout: float | None = None,
        retry_on: RetryRule = OSError,
        retry_after: Callable[[BaseException], float | None] = _hint,
        max_retry_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name = name
        self.limiter = limiter
        self.breaker = breaker or CircuitBreaker(name, clock=clock)
        self.retry = retry or RetryPolicy()
        self.attempt_timeout = attempt_timeout
        self._retry_on = retry_on
        self._retry_after = retry_after
        self._max_retry_after = max_retry_after
        self._clock = clock
        self._sleep = sleep

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a failure of the dependency that may go away."""
        if isinstance(exc, TimeoutError):
            return True
        rule = self._retry_on
        if isinstance(rule, type | tuple):
            return isinstance(exc, rule)
        return rule(exc)

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        timeout: float,  # noqa: ASYNC109 - one budget split over attempts and waits
        retry_if: Callable[[BaseException], bool] | None = None,
    ) -> T:
        """Run ``fn`` under the guard within ``timeout`` seconds overall.

        ``retry_if`` narrows which transient failures this call retries (say,
        not those after a non-idempotent request may have been applied); they
        count against the breaker all the same.
        """
        deadline = self._clock() + timeout
        attempt = 0
        last: BaseException | None = None
        while True:
            attempt += 1
            self._admit(last)
            try:
                await self._take_token(deadline)
            except BaseException:
                self.breaker.cancel_trial()
                raise
            left = deadline - self._clock()
            if left <= 0:
                self.breaker.cancel_trial()
                raise self._out_of_time(last, attempt - 1)
            budget = left if self.attempt_timeout is None else min(left, self.attempt_timeout)
            try:
                async with asyncio.timeout(budget):
                    result = await fn()
            except asyncio.CancelledError:
                self.breaker.cancel_trial()
                raise
            except Exception as exc:
                if not self.transient(exc):
                    self.breaker.record_success()
                    raise
                self.breaker.record_failure()
                if retry_if is not None and not retry_if(exc):
                    raise
                failure: Exception = exc
            else:
                self.breaker.record_success()
                return result
            last = failure
            wait = self._backoff(attempt, failure)
            if self.retry.exhausted(attempt) or self._clock() + wait >= deadline:
                failure.add_note(f"{self.name}: gave up after {attempt} attempt(s)")
                raise failure
            log.debug(
                "%s: attempt %d failed (%s: %s); retrying in %.3fs",
                self.name,
                attempt,
                type(failure).__name__,
                failure,
                wait,
            )
            await self._sleep(wait)

    def _admit(self, last: BaseException | None) -> None:
        try:
            self.breaker.check()
        except Unavailable as exc:
            if last is not None:
                raise exc from last
            raise

    async def _take_token(self, deadline: float) -> None:
        if self.limiter is None:
            return
        while True:
            wait = self.limiter.try_acquire()
            if wait <= 0:
                return
            if self._clock() + wait > deadline:
                raise ResourceExhausted(
                    f"{self.name}: rate limit of {self.limiter.rate:g}/s leaves no token "
                    f"before the deadline (next in {wait:.3f}s)",
                    retry_after=wait,
                    subject=self.name,
                    reason="RATE_LIMITED",
                )
            await self._sleep(wait)

    def _backoff(self, attempt: int, exc: BaseException) -> float:
        wait = self.retry.delay(attempt)
        hint = self._retry_after(exc)
        if hint is not None:
            wait = max(wait, min(hint, self._max_retry_after))
        return wait

    def _out_of_time(self, last: BaseException | None, attempts: int) -> BaseException:
        if last is not None:
            last.add_note(f"{self.name}: no time left after {attempts} attempt(s)")
            return last
        return TimeoutError(f"{self.name}: no time left to make the call")
