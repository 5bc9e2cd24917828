"""The one exception root of the core and its typed subclasses.

Core code raises these; a single place in each entry point (the gRPC error
mapper, later the Lambda handlers) turns them into wire answers. Each error
carries a stable machine ``reason`` (an ``ErrorInfo`` reason on the wire) and
the structured data a client needs to act on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


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


#: Longest piece of a caller's value an error message repeats.
ECHO_LIMIT = 120


def clip(value: str, limit: int = ECHO_LIMIT) -> str:
    """``value`` as an error message may echo it: cut to ``limit`` characters
    (a huge id must not make the error itself too large to deliver), control
    characters escaped (``x\\x00t``: visible, and harmless in logs)."""
    text = value if len(value) <= limit else value[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return text if len(value) <= limit else f"{text}...({len(value)} chars)"


def failure_text(exc: BaseException) -> str:
    """What a stored failure (a dead letter's last error, say) may say about
    ``exc``: a core error's reason and message; for anything else only that
    it was unexpected, with an error id to find its stack in the log (which
    the caller writes, with ``error_id(exc)``)."""
    if isinstance(exc, DataMCPError):
        return clip(f"{exc.reason}: {exc.message}", 1000)
    return f"unexpected error (error id {error_id(exc)})"


def error_id(exc: BaseException) -> str:
    """A short id for ``exc`` (the same for one exception object), to log
    beside its stack and show where its text may not go."""
    return f"{id(exc) & 0xFFFFFFFFFFFF:012x}"
