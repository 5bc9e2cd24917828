"""Due work: what a periodic tick (an EventBridge schedule) should start now.

Services with time-based work (pipelines with a cron schedule, memory syncs
on an interval) register one function here in bootstrap; the schedule
handler calls :meth:`DueWork.run` on every tick. Each function starts what is
due at ``now`` and returns how many things it started. It must be idempotent
per due slot (a run id derived from the schedule slot, say), because
EventBridge delivers a tick at least once and two ticks may overlap.

What a tick started runs in the background; a Lambda container is frozen
once its invocation returns, so the handler calls :meth:`DueWork.settle`:
wait for it within the time left, and stop what is still running (each
service records that as an interrupted run the next slot picks up) rather
than let it freeze half done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from datamcp.core.errors import FieldViolation, InvalidArgument

log = logging.getLogger(__name__)

#: Starts what is due at ``now`` (epoch seconds); returns how many were started.
DueFn = Callable[[float], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class DueResult:
    name: str
    started: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class _Registered:
    fire: DueFn
    #: How many things the service has running (started by ticks or otherwise).
    running: Callable[[], int]
    #: Stops what it has running.
    stop: Callable[[], Awaitable[None]] | None


class DueWork:
    def __init__(self) -> None:
        self._work: dict[str, _Registered] = {}

    def register(
        self,
        name: str,
        fn: DueFn,
        *,
        running: Callable[[], int] = lambda: 0,
        stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if name in self._work:
            raise ValueError(f"due work {name!r} is already registered")
        self._work[name] = _Registered(fn, running, stop)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._work)

    async def run(self, now: float, only: Sequence[str] = ()) -> list[DueResult]:
        """Run every registered function (or those named in ``only``) concurrently.

        One failing does not stop the others; its error is in its result.

        Raises:
            InvalidArgument: ``only`` names work nobody registered.
        """
        unknown = [n for n in only if n not in self._work]
        if unknown:
            known = ", ".join(self._work) or "none registered"
            raise InvalidArgument(
                "unknown due work",
                [FieldViolation("work", f"{', '.join(unknown)} (known: {known})")],
                reason="UNKNOWN_DUE_WORK",
            )
        names = list(only) or list(self._work)
        outcomes = await asyncio.gather(
            *(self._work[n].fire(now) for n in names), return_exceptions=True
        )
        results: list[DueResult] = []
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                log.warning("due work failed", extra={"work": name}, exc_info=outcome)
                results.append(DueResult(name, error=f"{type(outcome).__name__}: {outcome}"))
            else:
                results.append(DueResult(name, started=int(outcome)))
        return results

    async def settle(self, within: float, poll: float = 0.05) -> int:
        """Wait up to ``within`` seconds for the services' running work to end,
        then stop whatever still runs; returns how many were stopped."""
        deadline = time.monotonic() + within
        # The services count their running work; they have no "all done" event.
        while self._running() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        stopped = 0
        for name, work in self._work.items():
            left = work.running()
            if left and work.stop is not None:
                log.warning("due work out of time; stopped", extra={"work": name, "count": left})
                await work.stop()
                stopped += left
        return stopped

    def _running(self) -> int:
        return sum(work.running() for work in self._work.values())
