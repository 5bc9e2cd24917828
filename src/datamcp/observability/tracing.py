"""OpenTelemetry tracer provider set-up: exporter none, console or OTLP."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from datamcp import __version__
from datamcp.config.settings import TracingSettings


class EntrySampledRoots(Sampler):
    """Root sampler: server spans were already sampled at the gRPC entry."""

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(  # noqa: PLR0917 - the Sampler interface's signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.SERVER:
            return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links)
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"EntrySampledRoots({self._ratio.get_description()})"


def build_tracer_provider(settings: TracingSettings) -> TracerProvider:
    """A provider for the server's spans.

    With exporter ``none`` spans are still recorded (trace ids reach the logs
    and propagate to callees) but nothing is exported. Sampling is
    parent-based; server spans of new traces are sampled by the gRPC entry
    before any span exists (see ``entrypoints/grpc/tracing.py``), other new
    traces with probability ``sample_ratio``.
    """
    provider = TracerProvider(
        sampler=ParentBased(root=EntrySampledRoots(settings.sample_ratio)),
        resource=Resource.create(
            {"service.name": settings.service_name, "service.version": __version__}
        ),
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
