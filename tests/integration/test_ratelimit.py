"""Per-principal token buckets at the entry."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from datamcp.v1 import health_pb2, health_pb2_grpc
from tests.support import (
    API_KEY,
    OPERATOR_KEY,
    apikey,
    auth_overrides,
    make_settings,
    rich_details,
    running_server,
)

REPORT = health_pb2.GetHealthReportRequest()


async def test_exceeding_the_bucket_is_resource_exhausted_with_retry_info(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, **auth_overrides(), **{"rate_limit.rate": 0.5, "rate_limit.burst": 3}
    )
    async with running_server(settings) as srv, srv.channel() as channel:
        stub = health_pb2_grpc.HealthServiceStub(channel)
        for _ in range(3):
            await stub.GetHealthReport(REPORT, metadata=apikey(API_KEY))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetHealthReport(REPORT, metadata=apikey(API_KEY))
        # Another principal has its own bucket.
        await stub.GetHealthReport(REPORT, metadata=apikey(OPERATOR_KEY))
    error = err.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = rich_details(error)
    delay = details["RetryInfo"].retry_delay.ToNanoseconds() / 1e9
    assert 1.0 < delay <= 2.0  # one token at 0.5/s
    assert details["QuotaFailure"].violations[0].subject == "acme/alice"
    assert details["ErrorInfo"].reason == "RATE_LIMITED"


async def test_per_method_override_has_its_own_bucket(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        **auth_overrides(),
        **{
            "rate_limit.methods": {
                "/datamcp.v1.HealthService/GetMetrics": {"rate": 0.1, "burst": 1}
            }
        },
    )
    async with running_server(settings) as srv, srv.channel() as channel:
        stub = health_pb2_grpc.HealthServiceStub(channel)
        await stub.GetMetrics(health_pb2.GetMetricsRequest(), metadata=apikey(OPERATOR_KEY))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetMetrics(health_pb2.GetMetricsRequest(), metadata=apikey(OPERATOR_KEY))
        for _ in range(5):
            await stub.GetHealthReport(REPORT, metadata=apikey(OPERATOR_KEY))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_open_health_service_is_not_rate_limited(tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2 as std
    from grpc_health.v1 import health_pb2_grpc as std_grpc

    settings = make_settings(tmp_path, **{"rate_limit.rate": 0.01, "rate_limit.burst": 1})
    async with running_server(settings) as srv, srv.channel() as channel:
        stub = std_grpc.HealthStub(channel)
        for _ in range(10):
            await stub.Check(std.HealthCheckRequest())
