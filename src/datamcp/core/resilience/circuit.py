"""Circuit breaker: stop calling a dependency that keeps failing.

CLOSED: calls go through; ``failure_threshold`` consecutive failures open it.
OPEN: calls are refused for ``recovery_time`` seconds (callers get the time
left, to wait or to report). HALF_OPEN: up to ``half_open_calls`` trial calls
go through; one success closes the circuit, one failure opens it again.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from datamcp.core.errors import Unavailable


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        recovery_time: float = 30.0,
        half_open_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._recovery = recovery_time
        self._half_open_calls = half_open_calls
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self.retry_after() == 0.0:
            self._state = CircuitState.HALF_OPEN
            self._trials = 0
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._recovery - self._clock())

    def allow(self) -> bool:
        """Whether a call may go out now (a half-open trial counts as taken)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and self._trials < self._half_open_calls:
            self._trials += 1
            return True
        return False

    def cancel_trial(self) -> None:
        """Hand back a half-open trial that made no call (nothing to send)."""
        if self._state is CircuitState.HALF_OPEN and self._trials:
            self._trials -= 1

    def check(self) -> None:
        """Like :meth:`allow`, but raise when the call may not go out.

        Raises:
            Unavailable: the circuit is open; ``retry_after`` is in the metadata.
        """
        if not self.allow():
            wait = self.retry_after()
            raise Unavailable(
                f"{self.name} is failing; circuit open, next try in {wait:.1f}s",
                reason="CIRCUIT_OPEN",
                metadata={"dependency": self.name, "retry_after": f"{wait:.3f}"},
            )

    def record_success(self) -> None:
        self._state = CircuitState.CLOSED
        self._failures = 0

    def record_failure(self) -> None:
        if self._state is CircuitState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._open()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
