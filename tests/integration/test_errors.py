"""Core errors become the right status with google.rpc.Status details;
nothing a client sends can produce UNKNOWN, and no stack trace leaks."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from datamcp.v1 import health_pb2
from tests.probe import S, probe_call, probe_registration
from tests.support import make_settings, rich_details, running_server


async def test_unexpected_exception_is_internal_with_error_id_in_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "Boom")(S())
    error = err.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in error.details()
    assert "Traceback" not in error.details()
    error_id = rich_details(error)["ErrorInfo"].metadata["error_id"]
    assert error_id in error.details()
    logged = [r for r in caplog.records if getattr(r, "error_id", None) == error_id]
    assert logged and logged[0].exc_info is not None


async def test_invalid_argument_carries_field_violations(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "Invalid")(S(), metadata=(("x-request-id", "r-1"),))
    details = rich_details(err.value)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = details["BadRequest"].field_violations[0]
    assert (violation.field, violation.description) == ("name", "must not be empty")
    assert details["ErrorInfo"].reason == "INVALID_ARGUMENT"
    assert details["ErrorInfo"].metadata["request_id"] == "r-1"


async def test_version_conflict_is_aborted_with_stable_reason(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "Conflict")(S())
    assert err.value.code() == grpc.StatusCode.ABORTED
    assert rich_details(err.value)["ErrorInfo"].reason == "VERSION_MISMATCH"


@pytest.mark.parametrize("payload", [b"\xff", b"\x0a\x05ab", b"\x08"])
async def test_malformed_request_bytes_are_invalid_argument(tmp_path: Path, payload: bytes) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as channel:
        raw = channel.unary_unary(
            "/datamcp.v1.HealthService/GetHealthReport",
            request_serializer=lambda b: b,
            response_deserializer=health_pb2.GetHealthReportResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(payload)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_details(err.value)["BadRequest"].field_violations[0].field == "request"


async def test_unknown_method_is_unimplemented(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv, srv.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary("/datamcp.v1.HealthService/Nope")(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_oversized_request_is_resource_exhausted(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"server.max_message_bytes": 2048})
    async with running_server(settings, [probe_registration()]) as srv:
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await probe_call(channel, "WhoAmI")(S(value="x" * 10_000))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
