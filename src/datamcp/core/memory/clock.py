"""Hybrid logical clock and version vectors.

An HLC timestamp is one integer: milliseconds since the epoch shifted left
16 bits plus a logical counter. It never goes backwards, it moves past every
timestamp it has seen (``observe``), and a write made after seeing another
always has a greater timestamp, so ordering by HLC respects causality while
staying close to wall time. Causality itself is decided by version vectors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

LOGICAL_BITS = 16


class HybridClock:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self._last = 0

    def now(self, after: int = 0) -> int:
        """A timestamp greater than every one issued or observed, and than ``after``."""
        physical = int(self._wall() * 1000) << LOGICAL_BITS
        self._last = max(physical, self._last + 1, after + 1)
        return self._last

    def observe(self, remote: int) -> None:
        self._last = max(self._last, remote)

    @staticmethod
    def wall_seconds(hlc: int) -> float:
        return (hlc >> LOGICAL_BITS) / 1000.0


def dominates(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    """Whether version vector ``a`` includes everything ``b`` does (a >= b)."""
    return all(a.get(k, 0) >= v for k, v in b.items())


def concurrent(a: Mapping[str, int], b: Mapping[str, int]) -> bool:
    return not dominates(a, b) and not dominates(b, a)


def join(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        if v > out.get(k, 0):
            out[k] = v
    return out
