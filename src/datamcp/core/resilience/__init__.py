"""Resilience for calls to things outside the process: retry policy with
exponential backoff and full jitter, circuit breaker, and (in
``datamcp.core.ratelimit``) token buckets. Pure Python; adapters and agents
compose them around their own I/O."""

from datamcp.core.resilience.backoff import RetryPolicy
from datamcp.core.resilience.circuit import CircuitBreaker, CircuitState
from datamcp.core.resilience.guard import CallGuard

__all__ = ["CallGuard", "CircuitBreaker", "CircuitState", "RetryPolicy"]
