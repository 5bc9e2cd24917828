"""The one place that turns core errors into gRPC statuses with rich details.

Every non-OK answer carries a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer with an ``ErrorInfo`` (stable reason,
domain, metadata including the request id) plus, where they apply,
``BadRequest`` field violations, ``RetryInfo`` and ``QuotaFailure``.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from datamcp.core import errors

DOMAIN = "datamcp.dev"

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


def status_code(exc: errors.DataMCPError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(exc: errors.DataMCPError, request_id: str = "") -> grpc.Status:
    """Build the wire status for a core error."""
    code = status_code(exc)
    metadata = dict(exc.metadata)
    if request_id:
        metadata["request_id"] = request_id
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN, metadata=metadata))
    ]
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in exc.violations
                    ]
                )
            )
        )
    if isinstance(exc, errors.ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(1_000_000, int(exc.retry_after * 1e9)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        if exc.subject:
            details.append(
                _pack(
                    error_details_pb2.QuotaFailure(
                        violations=[
                            error_details_pb2.QuotaFailure.Violation(
                                subject=exc.subject, description=exc.message
                            )
                        ]
                    )
                )
            )
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=exc.message, details=details)
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
