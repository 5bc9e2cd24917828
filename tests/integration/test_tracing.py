"""Server spans through opentelemetry-instrumentation-grpc: recorded for traced
services, following the caller's trace context and sampling decision."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2 as std
from grpc_health.v1 import health_pb2_grpc as std_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from datamcp.v1 import health_pb2, health_pb2_grpc
from tests.probe import S, probe_call, probe_registration
from tests.support import make_settings, running_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def traceparent(sampled: bool) -> tuple[tuple[str, str]]:
    return (("traceparent", f"00-{TRACE_ID}-{PARENT}-{'01' if sampled else '00'}"),)


def spans_of(srv: object) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    srv.server.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    return exporter


async def test_calls_are_traced_with_the_callers_context(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path)) as srv:
        exporter = spans_of(srv)
        async with srv.channel() as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            await stub.GetHealthReport(
                health_pb2.GetHealthReportRequest(), metadata=traceparent(True)
            )
            await stub.GetHealthReport(health_pb2.GetHealthReportRequest())
            await std_grpc.HealthStub(channel).Check(std.HealthCheckRequest())
    child, root = exporter.get_finished_spans()
    assert child.name == "/datamcp.v1.HealthService/GetHealthReport"
    assert child.kind is SpanKind.SERVER
    assert f"{child.context.trace_id:032x}" == TRACE_ID
    assert child.parent is not None and f"{child.parent.span_id:016x}" == PARENT
    assert child.attributes["rpc.service"] == "datamcp.v1.HealthService"
    assert child.attributes["rpc.method"] == "GetHealthReport"
    assert root.parent is None and f"{root.context.trace_id:032x}" != TRACE_ID


async def test_sampling_follows_the_caller_and_the_ratio(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"tracing.sample_ratio": 0.0})
    async with running_server(settings) as srv:
        exporter = spans_of(srv)
        async with srv.channel() as channel:
            stub = health_pb2_grpc.HealthServiceStub(channel)
            request = health_pb2.GetHealthReportRequest()
            await stub.GetHealthReport(request)  # new trace, ratio 0: not traced
            await stub.GetHealthReport(request, metadata=traceparent(False))
            await stub.GetHealthReport(request, metadata=traceparent(True))
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE_ID


async def test_error_logs_carry_the_trace_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from datamcp.observability.logging import JsonFormatter, install_log_context

    install_log_context()
    caplog.set_level(logging.ERROR)
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        exporter = spans_of(srv)
        async with srv.channel() as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await probe_call(channel, "Boom")(
                    S(), metadata=(*traceparent(True), ("x-request-id", "req-7"))
                )
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    record = next(r for r in caplog.records if getattr(r, "error_id", None))
    line = JsonFormatter().format(record)
    assert f'"trace_id": "{TRACE_ID}"' in line
    assert '"request_id": "req-7"' in line
