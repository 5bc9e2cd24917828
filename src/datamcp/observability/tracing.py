"""OpenTelemetry tracer provider set-up: exporter none, console or OTLP."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from datamcp import __version__
from datamcp.config.settings import TracingSettings


def build_tracer_provider(settings: TracingSettings) -> TracerProvider:
    """A provider for the server's spans.

    With exporter ``none`` spans are still created (trace ids reach the logs
    and propagate to callees) but nothing is exported.
    """
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        )
    )
    exporter: SpanExporter | None = None
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter()
    elif settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, insecure=True)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install(provider: TracerProvider) -> None:
    trace.set_tracer_provider(provider)
