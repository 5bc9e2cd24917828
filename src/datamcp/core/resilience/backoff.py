"""Retry policy: how many attempts, and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter.

    Full jitter (a uniform draw below the exponential bound) spreads out
    callers that failed together, so they do not all come back together.
    """

    max_attempts: int = 5
    base_delay: float = 0.05
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        bound = min(self.max_delay, self.base_delay * 2 ** max(0, attempt - 1))
        return random.uniform(0, bound)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
