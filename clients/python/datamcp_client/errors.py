"""Typed exceptions with one root, built from the ``google.rpc.Status`` details.

Every failed call raises an :class:`RPCError` subclass chosen by its status
code. Its data comes from the details the server attaches, never from the
message text (which is for people and may be shortened): ``ErrorInfo``
(:attr:`RPCError.reason`, :attr:`RPCError.domain`, :attr:`RPCError.metadata`),
``BadRequest`` (:attr:`InvalidArgumentError.field_violations`), ``RetryInfo``
(:attr:`RPCError.retry_delay`) and ``QuotaFailure``
(:attr:`ResourceExhaustedError.quota_violations`).

Example:
    try:
        await client.agents.execute("echo", {"a": 1}, priority=1000)
    except datamcp_client.InvalidArgumentError as exc:
        for v in exc.field_violations:
            print(v.field, v.description)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


class DataMCPError(Exception):
    """Root of every exception this package raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request (``BadRequest.FieldViolation``)."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class QuotaViolation:
    """One exceeded quota (``QuotaFailure.Violation``)."""

    subject: str
    description: str


class RPCError(DataMCPError):
    """A call ended with a non-OK status.

    Attributes:
        code: the gRPC status code.
        message: the server's message, for people (do not parse it).
        reason: ``ErrorInfo.reason``, a stable machine code to switch on
            ("UNKNOWN_CAPABILITY", "VERSION_CONFLICT", ...); empty if absent.
        domain: ``ErrorInfo.domain`` ("datamcp.dev" for this server).
        metadata: ``ErrorInfo.metadata`` (for example ``request_id``,
            ``current_version``, ``error_id``).
        retry_delay: seconds from ``RetryInfo``, or None when the server gave none.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        retry_delay: float | None = None,
        quota_violations: Sequence[QuotaViolation] = (),
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations = tuple(field_violations)
        self.retry_delay = retry_delay
        self.quota_violations = tuple(quota_violations)

    @property
    def request_id(self) -> str:
        """The server's id of the failed request (quote it to the operator)."""
        return self.metadata.get("request_id", "")

    def __str__(self) -> str:
        head = f"{self.code.name}"
        if self.reason and self.reason != self.code.name:
            head += f" ({self.reason})"
        text = f"{head}: {self.message}"
        for v in self.field_violations:
            text += f"\n  {v.field}: {v.description}"
        return text


class InvalidArgumentError(RPCError):
    """The request was refused; :attr:`field_violations` say which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(RPCError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExistsError(RPCError):
    code = grpc.StatusCode.ALREADY_EXISTS


class AbortedError(RPCError):
    """A concurrency check failed (for example an ``expected_version`` mismatch:
    ``metadata["current_version"]``)."""

    code = grpc.StatusCode.ABORTED


class FailedPreconditionError(RPCError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(RPCError):
    """The server or one of its dependencies cannot be reached; retrying may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(RPCError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnauthenticatedError(RPCError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(RPCError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(RPCError):
    """Rate limited or a queue is full; :attr:`retry_delay` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InternalError(RPCError):
    """The server failed unexpectedly; ``metadata["error_id"]`` is in its log."""

    code = grpc.StatusCode.INTERNAL

    @property
    def error_id(self) -> str:
        return self.metadata.get("error_id", "")


class CancelledError(RPCError):
    """The call was cancelled (by this client or the server)."""

    code = grpc.StatusCode.CANCELLED


_BY_CODE: dict[grpc.StatusCode, type[RPCError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        AbortedError,
        FailedPreconditionError,
        UnavailableError,
        DeadlineExceededError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
        InternalError,
        CancelledError,
    )
}


def _status_details(trailers: Sequence[tuple[str, str | bytes]] | None) -> status_pb2.Status | None:
    for key, value in trailers or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a proxy's garbage must not hide the real error
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> RPCError:
    """The typed exception for a failed call (``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    call = error  # both kinds expose code(), details() and trailing_metadata()
    code: grpc.StatusCode = call.code() if hasattr(call, "code") else grpc.StatusCode.UNKNOWN
    message = (call.details() if hasattr(call, "details") else "") or ""
    trailers = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
    kwargs: dict[str, object] = {}
    status = _status_details(trailers)
    violations: list[FieldViolation] = []
    quotas: list[QuotaViolation] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                kwargs.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                kwargs["retry_delay"] = retry.retry_delay.ToNanoseconds() / 1e9
            elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                quota = error_details_pb2.QuotaFailure()
                detail.Unpack(quota)
                quotas += [QuotaViolation(v.subject, v.description) for v in quota.violations]
    cls = _BY_CODE.get(code, RPCError)
    return cls(
        message,
        code=code,
        field_violations=violations,
        quota_violations=quotas,
        **kwargs,  # type: ignore[arg-type]
    )
