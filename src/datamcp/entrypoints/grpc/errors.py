"""The one place that turns core errors into gRPC statuses with rich details.

Every non-OK answer carries a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer with an ``ErrorInfo`` (stable reason,
domain, metadata including the request id) plus, where they apply,
``BadRequest`` field violations, ``RetryInfo`` and ``QuotaFailure``.

Error text is for the caller. Whoever raised the error, what leaves here is
cut to a size the client's metadata limit takes (values echoed back can be
as large as the request; gRPC clients refuse trailers over 8-16 kB, and the
caller would see RESOURCE_EXHAUSTED instead of the real error), and text
that carries internals (SQL, driver wrappers, exception class names, stack
text) is replaced by a neutral sentence and an error id that is logged with
the original.
"""

from __future__ import annotations

import logging
import math
import os
import re

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from datamcp.core import errors

log = logging.getLogger(__name__)

DOMAIN = "datamcp.dev"

#: The message goes in ``grpc-message`` (percent-encoded: up to 3 bytes per
#: byte), the details in ``grpc-status-details-bin`` (base64: 4/3). Together
#: they stay well under the 8 kB soft limit of gRPC clients.
MAX_MESSAGE_BYTES = 512
MAX_DETAILS_BYTES = 2560
MAX_TEXT = 300  # one description, metadata value, subject
MAX_NAME = 128  # a field path, a metadata key, a reason
MAX_METADATA = 16

#: What only internals write: SQL and the wrappers drivers put around it,
#: exception class names, Python stack text.
_INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]*\", line \d+"
    r"|\[SQL: |\[parameters: |sqlalche\.me|\(Background on this error"
    r"|\b(?:sqlite3|asyncpg|aiosqlite|psycopg2?|sqlalchemy|builtins)\."
    r"|\b(?:SELECT\b[^.]{0,200}\bFROM|INSERT INTO|UPDATE \w+ SET|DELETE FROM|ON CONFLICT)\b"
    r"|\b(?:[A-Z][a-z0-9]+)+(?:Error|Exception)\b"
    r"|<class '|<object at 0x|\bobject at 0x[0-9a-f]+"
)

_CODES: dict[type[errors.DataMCPError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Conflict: grpc.StatusCode.ABORTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

_NEUTRAL = {
    grpc.StatusCode.UNAVAILABLE: "a dependency is unavailable; retry later",
    grpc.StatusCode.INVALID_ARGUMENT: "the request is invalid",
}


def status_code(exc: errors.DataMCPError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def internals(text: str) -> bool:
    """Whether ``text`` carries internals a caller must not see."""
    return _INTERNALS.search(text) is not None


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` UTF-8 bytes of ``text``, marked when cut."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "..."


class _Text:
    """Cleans the text of one answer; notes whether anything was withheld."""

    def __init__(self) -> None:
        self.withheld: list[str] = []

    def __call__(self, text: str, limit: int) -> str:
        if internals(text):
            self.withheld.append(text)
            return "(withheld: internal detail)"
        return _cut(text, limit)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _violations(
    exc: errors.InvalidArgument, clean: _Text, budget: int
) -> error_details_pb2.BadRequest:
    """As many field violations as the budget holds; the last one says how
    many more there were."""
    out = error_details_pb2.BadRequest()
    for i, v in enumerate(exc.violations):
        item = out.field_violations.add(
            field=clean(v.field, MAX_NAME), description=clean(v.description, MAX_TEXT)
        )
        if out.ByteSize() > budget - 64:
            del out.field_violations[-1]
            left = len(exc.violations) - i
            out.field_violations.add(
                field=item.field, description=f"... and {left} more problem(s) not shown"
            )
            break
    return out


def to_status(exc: errors.DataMCPError, request_id: str = "") -> grpc.Status:
    """Build the wire status for a core error."""
    code = status_code(exc)
    clean = _Text()
    message = clean(exc.message, MAX_MESSAGE_BYTES)
    metadata = {
        clean(key, MAX_NAME): clean(value, MAX_TEXT)
        for key, value in list(exc.metadata.items())[:MAX_METADATA]
    }
    if request_id:
        metadata["request_id"] = _cut(request_id, MAX_NAME)
    reason = _cut(exc.reason, MAX_NAME)
    if clean.withheld:
        error_id = os.urandom(6).hex()
        metadata["error_id"] = error_id
        log.warning(
            "error text withheld from the caller",
            extra={"error_id": error_id, "withheld": clean.withheld, "reason": reason},
        )
        if message.startswith("(withheld"):
            message = f"{_NEUTRAL.get(code, 'the request failed')} (error id {error_id})"
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))]
    used = sum(d.ByteSize() for d in details)
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        details.append(_pack(_violations(exc, clean, MAX_DETAILS_BYTES - used)))
    if isinstance(exc, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        after = exc.retry_after if math.isfinite(exc.retry_after) else 1.0
        delay.FromNanoseconds(int(min(max(after, 0.001), 86_400.0) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if exc.subject:
            details.append(
                _pack(
                    error_details_pb2.QuotaFailure(
                        violations=[
                            error_details_pb2.QuotaFailure.Violation(
                                subject=clean(exc.subject, MAX_TEXT),
                                description=clean(exc.message, MAX_TEXT),
                            )
                        ]
                    )
                )
            )
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=details)
    )


def internal_status(error_id: str) -> grpc.Status:
    """An unexpected failure: a reference the operator can grep, no stack trace."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=DOMAIN, metadata={"error_id": error_id}
    )
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error; quote error id {error_id} to the operator",
            details=[_pack(info)],
        )
    )
