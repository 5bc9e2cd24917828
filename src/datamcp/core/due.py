"""Due work: what a periodic tick (an EventBridge schedule) should start now.

Services with time-based work (pipelines with a cron schedule, memory syncs
on an interval) register one function here in bootstrap; the schedule
handler calls :meth:`DueWork.run` on every tick. Each function starts what is
due at ``now`` and returns how many things it started. It must be idempotent
per due slot (a run id derived from the schedule slot, say), because
EventBridge delivers a tick at least once and two ticks may overlap.
"""

from __future__ import annotations

import asyncio
import logging
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


class DueWork:
    def __init__(self) -> None:
        self._work: dict[str, DueFn] = {}

    def register(self, name: str, fn: DueFn) -> None:
        if name in self._work:
            raise ValueError(f"due work {name!r} is already registered")
        self._work[name] = fn

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
            *(self._work[n](now) for n in names), return_exceptions=True
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
