"""The mesh server: one ``grpc.aio`` server hosting every service.

It wraps every service's handlers once at registration (OpenTelemetry
outermost, then the entry; see ``wrapping.py`` for why there are no grpc
interceptors), the standard ``grpc.health.v1`` servicer fed by the health
monitor, reflection for every service, TLS, and graceful shutdown:
NOT_SERVING first, then new calls refused and long-lived streams ended
(UNAVAILABLE: reconnect elsewhere), in-flight unary calls given the grace.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from datamcp import __version__
from datamcp.bootstrap import App
from datamcp.core.background import finish_watched
from datamcp.core.errors import ConfigError
from datamcp.core.health import HealthMonitor, HealthReport
from datamcp.entrypoints.grpc.agent_service import AgentService
from datamcp.entrypoints.grpc.convert import page_bytes
from datamcp.entrypoints.grpc.entry import OPEN_PREFIXES, Entry
from datamcp.entrypoints.grpc.event_service import EventService
from datamcp.entrypoints.grpc.health_service import HealthService, StandardHealth
from datamcp.entrypoints.grpc.memory_service import MemorySyncService
from datamcp.entrypoints.grpc.pipeline_service import PipelineService
from datamcp.entrypoints.grpc.tracing import MethodTracing
from datamcp.entrypoints.grpc.wrapping import WrappingRegistrar
from datamcp.observability import tracing
from datamcp.v1 import (
    agents_pb2,
    agents_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    pipelines_pb2,
    pipelines_pb2_grpc,
)
from datamcp.v1 import health_pb2 as datamcp_health_pb2
from datamcp.v1 import health_pb2_grpc as datamcp_health_pb2_grpc

log = logging.getLogger(__name__)

#: Long-lived streams: one span for hours of traffic says nothing, and the
#: tracing wrapper costs on every message. Their work is traced where it
#: happens (publishes, and the actions consumers run).
UNTRACED_STREAMS = (
    "/datamcp.v1.EventService/Subscribe",
    "/datamcp.v1.AgentService/Connect",
    "/datamcp.v1.AgentService/WatchTask",
    "/datamcp.v1.MemorySyncService/WatchChanges",
    "/datamcp.v1.MemorySyncService/WatchSyncRun",
    "/datamcp.v1.PipelineService/PushRecords",
    "/datamcp.v1.PipelineService/WatchRun",
)

_COMPRESSION = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}


@dataclass(frozen=True, slots=True)
class Registration:
    """A service to host: its full name, how to add it, and the components it needs."""

    name: str
    add: Callable[[Any, WrappingRegistrar], None]
    servicer: Any
    needs: tuple[str, ...] = ()


def service_name(descriptor_module: Any, service: str) -> str:
    return str(descriptor_module.DESCRIPTOR.services_by_name[service].full_name)


def hosted_services() -> list[ServiceDescriptor]:
    """The descriptor of every service the server hosts (what reflection
    lists): the mesh's own, the standard health and reflection."""
    return [
        datamcp_health_pb2.DESCRIPTOR.services_by_name["HealthService"],
        events_pb2.DESCRIPTOR.services_by_name["EventService"],
        agents_pb2.DESCRIPTOR.services_by_name["AgentService"],
        memory_pb2.DESCRIPTOR.services_by_name["MemorySyncService"],
        pipelines_pb2.DESCRIPTOR.services_by_name["PipelineService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    ]


def core_services(app: App, monitor: HealthMonitor) -> list[Registration]:
    """The services this build hosts, in registration order."""
    return [
        Registration(
            service_name(datamcp_health_pb2, "HealthService"),
            datamcp_health_pb2_grpc.add_HealthServiceServicer_to_server,
            HealthService(monitor, app.metrics),
        ),
        Registration(
            service_name(events_pb2, "EventService"),
            events_pb2_grpc.add_EventServiceServicer_to_server,
            EventService(app.events, page_bytes(app.settings.server.max_message_bytes)),
            needs=("database", "event_bus"),
        ),
        Registration(
            service_name(agents_pb2, "AgentService"),
            agents_pb2_grpc.add_AgentServiceServicer_to_server,
            AgentService(app.agents, app.remote, page_bytes(app.settings.server.max_message_bytes)),
            needs=("database", "event_bus"),
        ),
        Registration(
            service_name(memory_pb2, "MemorySyncService"),
            memory_pb2_grpc.add_MemorySyncServiceServicer_to_server,
            MemorySyncService(app.memory, page_bytes(app.settings.server.max_message_bytes)),
            needs=("database", "event_bus"),
        ),
        Registration(
            service_name(pipelines_pb2, "PipelineService"),
            pipelines_pb2_grpc.add_PipelineServiceServicer_to_server,
            PipelineService(app.pipelines, app.streams),
            needs=("database", "event_bus"),
        ),
    ]


class MeshServer:
    """Owns the grpc.aio server for one :class:`App`.

    Args:
        app: the bootstrapped application.
        extra: more registrations (tests use this to host probe services).
    """

    def __init__(self, app: App, extra: Sequence[Registration] = ()) -> None:
        self.app = app
        self.stopping = asyncio.Event()
        settings = app.settings
        self.monitor = HealthMonitor(
            app.checks,
            interval=settings.health.interval,
            timeout=settings.health.check_timeout,
            version=__version__,
        )
        self.registrations = [*core_services(app, self.monitor), *extra]
        for registration in self.registrations:
            self.monitor.register_service(registration.name, registration.needs)
        self.health = StandardHealth()
        self.tracer_provider = tracing.build_tracer_provider(app.settings.tracing)
        self.port = 0
        self.entry: Entry | None = None
        self._server: aio.Server | None = None
        self._stopped = asyncio.Event()

    def _build(self) -> aio.Server:
        s = self.app.settings.server
        provider = self.tracer_provider
        tracing_ = MethodTracing(
            provider, OPEN_PREFIXES + UNTRACED_STREAMS, self.app.settings.tracing.sample_ratio
        )
        entry = self.entry = Entry(self.app.authenticator, self.app.limiter, self.app.metrics)

        def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
            return tracing_.wrap(method, entry.wrap(method, handler))

        options = [
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.keepalive_time_ms", int(s.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            (
                "grpc.http2.min_recv_ping_interval_without_data_ms",
                int(s.keepalive_min_client_interval * 1000),
            ),
            ("grpc.http2.max_pings_without_data", 0),
            # Only workers share a port (--workers); otherwise a second
            # server on the same port must fail to start, not split traffic.
            ("grpc.so_reuseport", 1 if s.reuse_port else 0),
        ]
        server = aio.server(
            options=options,
            maximum_concurrent_rpcs=s.max_concurrent_rpcs or None,
            compression=_COMPRESSION[s.compression],
        )
        registrar = WrappingRegistrar(server, wrap)
        for registration in self.registrations:
            registration.add(registration.servicer, registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        names = [r.name for r in self.registrations]
        names += [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        # enable_server_reflection would register on the server itself.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), registrar
        )
        registrar.check(hosted_services())
        return server

    def _bind(self, server: aio.Server) -> int:
        s = self.app.settings.server
        tls = self.app.settings.tls
        try:
            if tls.enabled:
                assert tls.cert_file is not None and tls.key_file is not None
                client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
                credentials = grpc.ssl_server_credentials(
                    [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                )
                port = server.add_secure_port(s.address, credentials)
            else:
                port = server.add_insecure_port(s.address)
        except (RuntimeError, OSError) as exc:
            raise ConfigError([f"listen: cannot bind {s.address}: {exc}"]) from exc
        if not port:
            raise ConfigError([f"listen: cannot bind {s.address} (in use or not local?)"])
        return int(port)

    async def _on_health(self, report: HealthReport) -> None:
        for name, serving in report.services.items():
            await self.health.set(
                name,
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING,
            )

    async def start(self) -> int:
        """Evaluate health, bind and start serving; returns the bound port."""
        await self.app.start()
        self.monitor.add_listener(self._on_health)
        await self.monitor.evaluate()
        self._server = self._build()
        self.port = self._bind(self._server)
        await self._server.start()
        self.monitor.start()
        log.info(
            "datamcp serving",
            extra={
                "address": f"{self.app.settings.server.host}:{self.port}",
                "port": self.port,
                "tls": self.app.settings.tls.enabled,
                "auth": self.app.authenticator.enabled,
                "database": self.app.engine.dialect.name,
                "version": __version__,
                "pid": os.getpid(),
                "instance": self.app.instance.id,
            },
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain delay, refuse new calls, end
        long-lived streams (UNAVAILABLE), give unary calls the grace."""
        if self.stopping.is_set():
            await self._stopped.wait()
            return
        s = self.app.settings.server
        grace = s.shutdown_grace if grace is None else grace
        self.stopping.set()
        log.info("shutting down", extra={"grace_seconds": grace})
        await self.health.enter_graceful_shutdown()
        await self.health.delivered(within=1.0)
        await self.monitor.shutdown()
        if s.drain_delay:
            await asyncio.sleep(s.drain_delay)
        if self._server is not None:
            # New calls are refused from the stop's first step; then the
            # long-lived streams end (clients reconnect elsewhere) and only
            # in-flight unary calls use the grace.
            stopped = asyncio.ensure_future(self._server.stop(grace))
            await asyncio.sleep(0)
            while self.entry is not None and not stopped.done():
                # Again while any is left: a handler may have swallowed the
                # cancellation (or been sending when it came).
                self.entry.end_streams()
                await asyncio.wait({stopped}, timeout=0.5)
            await stopped
        await finish_watched(self.app.close(), 5.0, _slow_close)
        self.tracer_provider.shutdown()
        self._stopped.set()
        log.info("stopped")


def _slow_close(waiting: list[str]) -> None:
    log.warning("shutdown is taking long; still waiting", extra={"tasks": waiting})
