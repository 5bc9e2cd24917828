"""The one bootstrap: builds the application from settings and picks adapters.

Every entry point (gRPC server, CLI, later the Lambda handlers) calls
:meth:`App.create`; everything else receives what it needs as arguments.
Async engines are bound to the running loop, so nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from datamcp import __version__
from datamcp.adapters.dependencies import DependencyCheck
from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine, normalise_url
from datamcp.adapters.sqlalchemy.health import DatabaseCheck
from datamcp.adapters.sqlalchemy.memory_ledger import SqlSyncLedger
from datamcp.adapters.sqlalchemy.memory_store import SqlMemoryStore
from datamcp.adapters.sqlalchemy.uow import SqlUnitOfWork
from datamcp.config.settings import MemoryStoreSettings, Settings
from datamcp.core import instances
from datamcp.core.agents.builtin.echo import EchoAgent
from datamcp.core.agents.builtin.memory import MemoryAgent, MemoryPort
from datamcp.core.agents.builtin.pipeline import PipelineAgent, PipelinePort
from datamcp.core.agents.builtin.profile import ProfileAgent
from datamcp.core.agents.manager import AgentManager
from datamcp.core.agents.plugins import load_plugins
from datamcp.core.agents.queued import TaskQueue
from datamcp.core.agents.remote import Grant, RemoteHub
from datamcp.core.agents.triggers import SUBMIT_TASK, submit_task_action
from datamcp.core.auth import Authenticator
from datamcp.core.background import cancel_and_wait
from datamcp.core.due import DueWork
from datamcp.core.errors import ConfigError, Unavailable
from datamcp.core.events.api import EventsApi
from datamcp.core.events.bus import EventBus
from datamcp.core.events.model import EventFilter
from datamcp.core.events.ports import Broker
from datamcp.core.events.relay import BrokerRelay
from datamcp.core.events.router import Router, Trigger
from datamcp.core.events.subscriptions import SubscriptionService
from datamcp.core.health import FunctionCheck, HealthCheck
from datamcp.core.instance_model import Instance
from datamcp.core.memory.schedule import SYNC_ACTION, SyncScheduler, sync_action
from datamcp.core.memory.service import AgentMemory, MemoryService
from datamcp.core.memory.sync import SyncEngine
from datamcp.core.memory.system import MemorySystem
from datamcp.core.metrics import MetricsRegistry
from datamcp.core.pipelines.service import RUN_ACTION, AgentPort, PipelineService
from datamcp.core.ports import UnitOfWork
from datamcp.core.ratelimit import KeyedRateLimiter
from datamcp.core.resilience import CircuitBreaker
from datamcp.core.signals import LocalSignals, Signals
from datamcp.core.streams import StreamService


@dataclass
class App:
    """Everything a running mesh process shares, built once."""

    settings: Settings
    engine: AsyncEngine
    instance: Instance
    metrics: MetricsRegistry
    authenticator: Authenticator
    limiter: KeyedRateLimiter | None
    checks: list[HealthCheck]
    events: EventsApi
    router: Router
    relays: list[BrokerRelay]
    agents: AgentManager
    remote: RemoteHub
    streams: StreamService
    pipelines: PipelineService
    memory: MemorySystem
    #: Wake-ups to and from the other processes on this database.
    signals: Signals = field(default_factory=LocalSignals)
    #: Time-based work the schedule handler starts (services register here).
    due: DueWork = field(default_factory=DueWork)
    _heartbeats: asyncio.Task[None] | None = None
    _stop_beating: asyncio.Event = field(default_factory=asyncio.Event)

    def uow(self) -> UnitOfWork:
        return SqlUnitOfWork(self.engine)

    @classmethod
    async def create(cls, settings: Settings) -> App:
        """Connect, migrate and register this instance.

        Raises:
            ConfigError: an auth key file cannot be loaded.
            Unavailable: the database cannot be reached or migrated.
        """
        settings = await resolve_database(settings)
        authenticator = Authenticator(settings.auth)
        triggers = [Trigger.from_config(t) for t in settings.events.triggers]
        engine = create_engine(settings.database_url)
        instance = Instance.for_this_process(__version__)
        try:
            await _schema(settings, engine)
            await instances.register(lambda: SqlUnitOfWork(engine), instance)
        except Exception as exc:
            await engine.dispose()
            raise Unavailable(
                f"database {engine.url.render_as_string(hide_password=True)} is not usable: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        rl = settings.rate_limit
        limiter = None
        if rl.enabled:
            limiter = KeyedRateLimiter(
                (rl.default.rate, rl.default.burst),
                {m: (q.rate, q.burst) for m, q in rl.methods.items()},
            )
        metrics = MetricsRegistry()

        def uow() -> UnitOfWork:
            return SqlUnitOfWork(engine)

        signals = _signals(engine, instance)
        ev = settings.events
        bus = EventBus(
            uow,
            retention_age=ev.retention_age,
            retention_count=ev.retention_count,
            signals=signals,
        )
        subscriptions = SubscriptionService(
            uow,
            default_max_attempts=ev.max_attempts,
            default_visibility_timeout=ev.visibility_timeout,
        )
        events = EventsApi(
            bus,
            subscriptions,
            max_event_bytes=ev.max_event_bytes,
            max_batch=ev.max_batch,
            poll_interval=ev.poll_interval,
        )
        checks: list[HealthCheck] = [
            DatabaseCheck(engine, uow, instance.id),
            FunctionCheck("event_bus", bus.check),
            *(
                DependencyCheck(d, settings.health.check_timeout)
                for d in settings.health.dependencies
            ),
        ]
        relays = [_relay(b, subscriptions, bus) for b in ev.brokers]
        checks += [FunctionCheck(r.name, r.check, critical=False) for r in relays]
        router = Router(events, triggers)
        try:
            memory = await _memory(settings, engine, bus, instance, uow)
        except Exception:
            await engine.dispose()
            raise
        checks.append(FunctionCheck("memory_stores", memory.check, critical=False))
        try:
            from datamcp.adapters.pipelines import build_pipeline_service

            pipelines = build_pipeline_service(settings, events, uow, instance.id)
            router.register_action(RUN_ACTION, pipelines.router_action())
            agents = _agent_manager(
                settings,
                bus,
                uow,
                instance,
                memory=AgentMemory(memory.service),
                pipelines=AgentPort(pipelines),
            )
            router.register_action(SYNC_ACTION, sync_action(memory.sync))
            agents.queued_tasks.queue = _task_queue(settings)
            agents.queued_tasks.max_timeout = settings.agents.task_queue_max_timeout
            router.register_action(SUBMIT_TASK, submit_task_action(agents))
            router.validate()
        except ConfigError:
            await memory.stop()
            await engine.dispose()
            raise
        app = cls(
            settings,
            engine,
            instance,
            metrics,
            authenticator,
            limiter,
            checks,
            events,
            router,
            relays,
            agents,
            RemoteHub(
                agents,
                settings.agents.heartbeat_interval,
                [
                    Grant(g["agent"], g["owner"], frozenset(g["tenants"]))
                    for g in settings.agents.grants
                ],
            ),
            streams=_streams(settings, uow, events, instance, metrics),
            memory=memory,
            pipelines=pipelines,
            signals=signals,
        )
        app._wire()
        return app

    def _wire(self) -> None:
        """Metrics sections, and the due work a schedule tick starts: what the
        servers' own schedulers fire (cron memory syncs, pipeline schedules)."""
        metrics, memory, pipelines = self.metrics, self.memory, self.pipelines
        metrics.add_section_provider("pipelines", pipelines.metrics)
        metrics.add_section_provider("memory", memory.metrics)
        metrics.add_section_provider("infrastructure", self._infrastructure_metrics)
        metrics.add_section_provider("agents", self.agents.metrics)

        async def pipeline_schedules(_now: float) -> int:
            # Due slots are the stored next fire times; each is claimed once.
            return await pipelines.fire_due()

        self.due.register(
            "memory.sync",
            memory.scheduler.fire_due,
            running=lambda: memory.sync.running,
            stop=memory.sync.stop,
        )
        if pipelines.runs.can_run():  # not in the Lambda zip: the servers fire them
            self.due.register(
                "pipelines",
                pipeline_schedules,
                running=lambda: pipelines.runs.running,
                stop=pipelines.runs.stop,
            )

    async def start(self) -> None:
        """Start background work (the heartbeat, the event writer, retention,
        triggers)."""
        self._heartbeats = asyncio.create_task(
            instances.heartbeats(
                self.uow,
                self.instance.id,
                self.settings.replicas.heartbeat_interval,
                self._stop_beating,
            ),
            name="instance-heartbeats",
        )
        await self.signals.start()
        if self.limiter is not None and not isinstance(self.signals, LocalSignals):
            await self.limiter.share(self.signals)  # quotas hold mesh-wide
        await self.events.bus.start()
        await self.memory.start()
        await self.agents.start()
        await self.router.start()
        for relay in self.relays:
            await relay.start()
        await self.streams.start()
        await self.pipelines.start()

    def _infrastructure_metrics(self) -> dict[str, float]:
        pool: Any = self.engine.pool
        bus = self.events.bus
        values = {
            "events_published": float(bus.published),
            "event_commits": float(bus.commits),
            "process_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "instance_started_at": self.instance.started_at,
        }
        for name in ("size", "checkedout", "overflow"):
            method = getattr(pool, name, None)
            if callable(method):
                values[f"db_pool_{name}"] = float(method())
        return values

    async def close(self) -> None:
        await self.pipelines.stop()
        await self.streams.stop()
        for relay in self.relays:
            await relay.stop()
        await self.router.stop()
        await self.agents.stop()
        await self.memory.stop()
        if self.agents.queued_tasks.queue is not None:
            await self.agents.queued_tasks.queue.close()
        await self.events.bus.stop()
        if self.limiter is not None:
            await self.limiter.close()
        await self.signals.stop()
        self._stop_beating.set()  # the beat in progress finishes
        if self._heartbeats is not None:
            _, beating = await asyncio.wait({self._heartbeats}, timeout=10.0)
            await cancel_and_wait(*beating)
        # The database may be the very reason we are stopping.
        with contextlib.suppress(Exception):
            await instances.mark_stopped(self.uow, self.instance.id)
        await self.engine.dispose()


def _signals(engine: AsyncEngine, instance: Instance) -> Signals:
    """LISTEN/NOTIFY on PostgreSQL, where replicas share the database; on
    SQLite one process owns the file and nobody needs telling."""
    if engine.dialect.name != "postgresql":
        return LocalSignals()
    from datamcp.adapters.sqlalchemy.signals import PgSignals

    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return PgSignals(dsn, instance.id)


async def resolve_database(settings: Settings) -> Settings:
    """``settings`` with the database URL read from ``database_url_secret``
    when one is set (AWS is imported only then).

    Raises:
        Unavailable: the secret cannot be read.
        ConfigError: it holds no usable URL.
    """
    if not settings.database_url_secret:
        return settings
    from datamcp.adapters.aws.secrets import read_database_url

    url = await read_database_url(settings.database_url_secret)
    if not url.startswith(("sqlite", "postgresql", "postgres")):
        raise ConfigError(
            [
                f"database_url_secret: {settings.database_url_secret} holds a URL that is not "
                "sqlite:/// or postgresql://"
            ]
        )
    return replace(settings, database_url=url)


async def _schema(settings: Settings, engine: AsyncEngine) -> None:
    """Migrate at start (``database_migrate = auto``) or only check (``verify``)."""
    if settings.database_migrate == "auto":
        await migrate.upgrade(engine)
    else:
        await migrate.verify(engine)


async def migrate_database(settings: Settings) -> list[str]:
    """The deployment's migration step (``datamcp db upgrade``, the migration
    Job and function): the application schema, then the schema of every memory
    store, each under its database's schema lock. Returns what was done, one
    line per database.

    Raises:
        Unavailable: a database cannot be reached or its lock was not free.
        ConfigError: a memory store database belongs to another store.
    """
    settings = await resolve_database(settings)
    engine = create_engine(settings.database_url)
    try:
        outcome = await migrate.upgrade(engine)
        done = [outcome.describe()]
        app_url = normalise_url(settings.database_url)
        for c in _store_configs(settings):
            shared = normalise_url(c.url) == app_url
            store_engine = engine if shared else create_engine(c.url)
            store = SqlMemoryStore(c.id, store_engine, owns_engine=not shared)
            try:
                await store.open(create=True)
            finally:
                await store.close()
            done.append(f"memory store {c.id}: schema ready")
        return done
    finally:
        await engine.dispose()


def _store_configs(settings: Settings) -> tuple[MemoryStoreSettings, ...]:
    return settings.memory.stores or (MemoryStoreSettings("primary", settings.database_url, True),)


async def _memory(
    settings: Settings, engine: AsyncEngine, bus: EventBus, instance: Instance, uow: Any
) -> MemorySystem:
    """The memory stores (opened: schemas created), the service, sync and schedules.

    A store whose URL is the application database shares its engine; with no
    stores configured there is one, ``primary``, in the application database.
    """
    m = settings.memory
    configs = _store_configs(settings)
    app_url = normalise_url(settings.database_url)
    stores: list[SqlMemoryStore] = []
    try:
        for c in configs:
            shared = normalise_url(c.url) == app_url
            store_engine = engine if shared else create_engine(c.url)
            store = SqlMemoryStore(
                c.id, store_engine, primary=c.primary, owns_engine=not shared, outbox=shared
            )
            stores.append(store)
            await store.open(create=settings.database_migrate == "auto")
    except Exception as exc:
        for store in stores:
            await store.close()
        if isinstance(exc, ConfigError):
            raise
        raise Unavailable(
            f"memory store {c.id} is not usable: {type(exc).__name__}: {exc}"
        ) from exc
    service = MemoryService(
        stores,
        publish=bus.publish,
        committed=bus.committed_elsewhere,
        history_depth=m.history_depth,
        max_value_bytes=m.max_value_bytes,
        purge_interval=m.purge_interval,
        purge_batch=m.purge_batch,
        signals=bus.signals,
    )

    async def lookup(instance_id: str) -> Instance | None:
        async with uow() as tx:
            found: Instance | None = await tx.instances.get(instance_id)
            return found

    sync = SyncEngine(
        service,
        SqlSyncLedger(engine),
        publish=bus.publish,
        policies=m.policies,
        instance=instance,
        instances=lookup,
        stale_after=settings.replicas.stale_after,
        signals=bus.signals,
    )
    scheduler = SyncScheduler(sync, m.schedules)
    return MemorySystem(
        service, sync, scheduler, recovery_interval=settings.replicas.check_interval
    )


def _streams(
    settings: Settings, uow: Any, events: EventsApi, instance: Instance, metrics: MetricsRegistry
) -> StreamService:
    streams = StreamService(
        uow,
        events,
        instance.id,
        policy=settings.streams,
        max_event_bytes=settings.events.max_event_bytes,
    )
    # Stream jobs report in the pipelines section (health.proto: "runs, rows,
    # stream jobs"); their keys all start with "stream_".
    metrics.add_section_provider("pipelines", streams.metrics)
    return streams


def _broker(config: Mapping[str, Any]) -> Broker:
    """Build a broker adapter; AWS code is imported only when one is configured."""
    from datamcp.adapters.aws import EventBridgeBroker, SqsBroker

    region = str(config.get("region") or os.environ.get("AWS_REGION") or "us-east-1")
    endpoint = config.get("endpoint_url") or None
    if config["kind"] == "eventbridge":
        return EventBridgeBroker(str(config["bus_name"]), region=region, endpoint_url=endpoint)
    return SqsBroker(str(config["queue_url"]), region=region, endpoint_url=endpoint)


def _task_queue(settings: Settings) -> TaskQueue | None:
    """The SQS task queue for queued execution; boto is imported only when set."""
    a = settings.agents
    if not a.task_queue_url:
        return None
    from datamcp.adapters.aws.task_queue import SqsTaskQueue

    region = a.task_queue_region or os.environ.get("AWS_REGION") or "us-east-1"
    return SqsTaskQueue(a.task_queue_url, region=region, endpoint_url=a.task_queue_endpoint_url)


def _relay(
    config: Mapping[str, Any], subscriptions: SubscriptionService, bus: EventBus
) -> BrokerRelay:
    broker = _broker(config)
    breaker = CircuitBreaker(
        f"broker:{broker.name}",
        failure_threshold=int(config.get("failure_threshold", 5)),
        recovery_time=float(config.get("recovery_time", 30.0)),
    )
    flt = EventFilter.build(config.get("types", []))
    return BrokerRelay(broker, subscriptions, bus, flt, breaker=breaker)


def _agent_manager(
    settings: Settings,
    bus: EventBus,
    uow: Any,
    instance: Instance,
    *,
    memory: MemoryPort,
    pipelines: PipelinePort,
) -> AgentManager:
    """The manager with the built-in agents (``memory`` and ``pipeline`` over
    their services' ports) and the plugins from config."""
    a = settings.agents
    manager = AgentManager(
        bus,
        uow,
        instance,
        policy=a.policy,
        strategy=a.strategy,
        signals=bus.signals,
        # Replicas share one PostgreSQL database; SQLite has one process.
        shared_pool=not isinstance(bus.signals, LocalSignals),
    )
    manager.add_agent(EchoAgent())
    manager.add_agent(ProfileAgent({"roots": [str(r) for r in a.profile_roots]}))
    if a.sql_connections:
        from datamcp.adapters.sqlalchemy.sql_agent import SqlAgent

        manager.add_agent(
            SqlAgent({"connections": dict(a.sql_connections), "row_limit": a.sql_row_limit})
        )
    if a.http_apis:
        from datamcp.adapters.http_agent import HttpAgent

        manager.add_agent(HttpAgent({"apis": dict(a.http_apis)}))
    manager.add_agent(MemoryAgent(memory))
    manager.add_agent(PipelineAgent(pipelines))
    for plugin in load_plugins(a.plugins):
        manager.add_agent(plugin)
    return manager
