"""Pipeline connectors (files, SQL, HTTP, S3) and the service assembly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from datamcp.adapters.pipelines import csv, events, http, jsonl, s3, sql, table
from datamcp.adapters.pipelines.connectors import PipelineConnectors
from datamcp.adapters.pipelines.s3 import S3Settings
from datamcp.config.settings import PipelineSettings, Settings
from datamcp.core.errors import FailedPrecondition
from datamcp.core.events.api import EventsApi
from datamcp.core.events.bus import EventBus
from datamcp.core.pipelines import kinds
from datamcp.core.pipelines.runs import RunManager
from datamcp.core.pipelines.service import PipelineService
from datamcp.core.ports import UnitOfWorkFactory

if TYPE_CHECKING:
    from datamcp.core.pipelines.engine import Engine

# The source and destination kinds, one module each (adding one: here).
kinds.register(csv, jsonl, sql, http, s3, events, table)


def connectors_from(settings: PipelineSettings, bus: EventBus | None = None) -> PipelineConnectors:
    """Raises ConfigError when an HTTP API entry is invalid."""
    return PipelineConnectors(
        data_roots=settings.data_roots,
        sql_connections=settings.sql_connections,
        http_apis=settings.http_apis,
        bus=bus,
        s3=S3Settings(settings.s3_region, settings.s3_endpoint_url),
    )


def build_pipeline_service(
    settings: Settings, events: EventsApi, uow: UnitOfWorkFactory, instance_id: str
) -> PipelineService:
    p = settings.pipelines
    connectors = connectors_from(p, events.bus)

    def make_engine() -> Engine:
        try:
            from datamcp.core.pipelines.engine import Engine
        except ImportError as exc:  # the Lambda zip leaves DuckDB and Arrow out
            raise FailedPrecondition(
                "this deployment cannot run pipelines (its package leaves the engine out: "
                f"{exc.name or exc}); runs, previews and schedules run on the gRPC servers "
                "or in the container-image functions",
                reason="PIPELINE_ENGINE_MISSING",
            ) from None
        return Engine(
            connectors,
            batch_size=p.batch_size,
            rejects_kept=p.rejects_kept,
            max_lookup_rows=p.max_lookup_rows,
            progress_every=p.progress_interval,
            chunk_rows=p.chunk_rows,
            memory_limit=p.memory_limit,
            threads=p.threads,
        )

    runs = RunManager(events.bus, uow, make_engine, instance_id, p.policy)
    return PipelineService(uow, runs, connectors, events, schedule_tick=p.schedule_tick)


__all__ = ["PipelineConnectors", "build_pipeline_service", "connectors_from"]
