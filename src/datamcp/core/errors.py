"""The one exception root of the core and its typed subclasses.

Core code raises these; a single place in each entry point (the gRPC error
mapper, later the Lambda handlers) turns them into wire answers. Each error
carries a stable machine ``reason`` (an ``ErrorInfo`` reason on the wire) and
the structured data a client needs to act on it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: How much of a caller's value an error quotes back (ids, names, paths).
ECHO_LIMIT = 80


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DataMCPError(Exception):
    """Root of every error the core raises on purpose."""

    reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.reason


class InvalidArgument(DataMCPError):
    """The request is malformed; ``violations`` say which fields and why."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        violations: Sequence[FieldViolation] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.violations = tuple(violations)


class NotFound(DataMCPError):
    reason = "NOT_FOUND"


class AlreadyExists(DataMCPError):
    reason = "ALREADY_EXISTS"


class Conflict(DataMCPError):
    """An optimistic-concurrency check failed (expected version mismatch)."""

    reason = "VERSION_CONFLICT"


class FailedPrecondition(DataMCPError):
    reason = "FAILED_PRECONDITION"


class Unavailable(DataMCPError):
    """A dependency is down; retrying later may succeed."""

    reason = "UNAVAILABLE"


class DeadlineExceeded(DataMCPError):
    reason = "DEADLINE_EXCEEDED"


class Unauthenticated(DataMCPError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(DataMCPError):
    reason = "PERMISSION_DENIED"


class ResourceExhausted(DataMCPError):
    """A quota or a bounded queue is full; ``retry_after`` says when to try again."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float,
        subject: str = "",
        quota: str = "",
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after
        self.subject = subject
        self.quota = quota


class ConfigError(DataMCPError):
    """Settings are invalid; ``problems`` lists each one with its fix."""

    reason = "INVALID_CONFIG"

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))
        self.problems = tuple(problems)


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """A caller's value as an error may quote it: control characters escaped
    and cut to ``limit`` characters (a 10 kB id must not come back whole: the
    error's trailers would overflow the client's metadata limit)."""
    text = value if isinstance(value, str) else str(value)
    size = len(text)
    if size > limit:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return f"{text}...({size} characters)" if size > limit else text


#: SQLSTATE classes of outages: connection exception, insufficient resources,
#: operator intervention (shutdown, cannot connect now), system error; and
#: transaction rollback (serialization failure, deadlock: retry succeeds).
_OUTAGE_SQLSTATES = ("08", "53", "57", "58", "40")
_OUTAGE_TEXT = re.compile(
    r"database is locked|disk i/o error|unable to open database|database or disk is full"
    r"|connection (?:was )?(?:closed|refused|reset|lost)|server closed the connection",
    re.IGNORECASE,
)


def is_outage(exc: BaseException) -> bool:
    """Whether a failure of a store or dependency is an outage (worth retrying
    later) rather than a bad value or a bug. Duck-typed on what database and
    network errors carry, so the core needs none of their types."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, OSError | TimeoutError) or getattr(
            current, "connection_invalidated", False
        ):
            return True
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and state[:2] in _OUTAGE_SQLSTATES:
            return True
        if _OUTAGE_TEXT.search(str(current)[:500]):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
        seen += 1
    return False


def store_failure(exc: BaseException, what: str) -> BaseException:
    """What a caller is told when ``what`` (a store, a queue) failed with
    ``exc``: :class:`Unavailable` with a message free of internals for an
    outage; otherwise ``exc`` itself, which the entry point reports as an
    internal error with an id it logs with the stack (a data error is a bug or
    a gap in validation, not an outage: retrying would not help)."""
    if is_outage(exc):
        error = Unavailable(f"{what} is unavailable; retry later", reason="STORE_UNAVAILABLE")
        error.__cause__ = exc
        return error
    return exc
