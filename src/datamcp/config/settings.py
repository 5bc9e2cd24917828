"""Typed, validated settings built from the field table.

``load_settings`` merges defaults, an optional TOML config file, ``DATAMCP_*``
environment variables and command-line values, then validates everything at
once so a bad start reports every problem with what to do about it.

Every default, bound and choice is stated once, on its
:class:`~datamcp.config.fields.Field` (a setting that maps onto a core policy
takes its default from that policy's dataclass). The dataclasses here have no
defaults of their own: a :class:`Settings` comes only from ``load_settings``
(``load_settings(environ={})`` is the all-defaults one), and each section is
read field by field from the table (``Reader.section``), so a dataclass field
is the setting of the same name. Where the core has a policy type (agents'
``TaskPolicy``, ``StreamPolicy``, memory's ``NamespacePolicy`` and
``Schedule``, auth's ``JwtSettings``), the settings hold it, built here, and
the bootstrap passes it on as it is.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamcp.config import sections
from datamcp.config.fields import BY_KEY
from datamcp.config.reader import Reader, merge
from datamcp.config.sections import Dependency, MemorySettings, MemoryStoreSettings, Quota
from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.auth import AuthSettings, JwtSettings
from datamcp.core.context import valid_tenant
from datamcp.core.errors import ConfigError
from datamcp.core.pipelines.model import RunPolicy
from datamcp.core.streams.service import StreamPolicy

__all__ = [
    "SECRET_ARN",
    "AgentSettings",
    "Dependency",
    "EventSettings",
    "HealthSettings",
    "LoggingSettings",
    "MemorySettings",
    "MemoryStoreSettings",
    "PipelineSettings",
    "Quota",
    "RateLimitSettings",
    "ReplicaSettings",
    "ServerSettings",
    "ServerlessSettings",
    "Settings",
    "TlsSettings",
    "TracingSettings",
    "default_data_root",
    "load_settings",
]

#: Where ``database_url_secret`` may point: a Secrets Manager secret or an SSM parameter.
SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+"
    r"|ssm:[a-z0-9-]+:\d{12}:parameter/[\w/.-]+)$"
)


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    enabled: bool
    default: Quota
    methods: Mapping[str, Quota]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path | None
    key_file: Path | None
    client_ca_file: Path | None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    insecure: bool
    workers: int
    reuse_port: bool
    shutdown_grace: float
    drain_delay: float
    max_message_bytes: int
    max_concurrent_rpcs: int
    compression: str
    keepalive_time: float
    keepalive_timeout: float
    keepalive_min_client_interval: float

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval: float
    check_timeout: float
    dependencies: tuple[Dependency, ...]


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """How processes sharing one database watch each other (core.instances)."""

    heartbeat_interval: float
    stale_after: float
    check_interval: float


@dataclass(frozen=True, slots=True)
class EventSettings:
    max_event_bytes: int
    max_batch: int
    retention_age: float
    retention_count: int
    max_attempts: int
    visibility_timeout: float
    poll_interval: float
    triggers: tuple[Mapping[str, Any], ...]
    brokers: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class AgentSettings:
    strategy: str
    #: The ``agents.*`` settings the manager runs tasks by (and the replica timing).
    policy: TaskPolicy
    heartbeat_interval: float
    #: Each {agent, owner, tenants}: see ``core.agents.remote.Grant``.
    grants: tuple[Mapping[str, Any], ...]
    plugins: tuple[str, ...]
    sql_connections: Mapping[str, str]
    sql_row_limit: int
    http_apis: Mapping[str, Mapping[str, Any]]
    profile_roots: tuple[Path, ...]
    task_queue_url: str | None
    task_queue_region: str | None
    task_queue_endpoint_url: str | None
    task_queue_max_timeout: float


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    data_roots: tuple[Path, ...]
    sql_connections: Mapping[str, str]
    http_apis: Mapping[str, Mapping[str, Any]]
    policy: RunPolicy
    batch_size: int
    rejects_kept: int
    max_lookup_rows: int
    schedule_tick: float
    progress_interval: float
    memory_limit: str
    threads: int
    chunk_rows: int
    s3_region: str
    s3_endpoint_url: str | None


@dataclass(frozen=True, slots=True)
class TracingSettings:
    exporter: str
    sample_ratio: float
    otlp_endpoint: str
    service_name: str


@dataclass(frozen=True, slots=True)
class ServerlessSettings:
    """What only the Lambda handlers read."""

    dead_letter_queue_url: str | None


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str
    database_url_secret: str | None
    database_migrate: str
    server: ServerSettings
    tls: TlsSettings
    auth: AuthSettings
    rate_limit: RateLimitSettings
    health: HealthSettings
    replicas: ReplicaSettings
    events: EventSettings
    agents: AgentSettings
    pipelines: PipelineSettings
    streams: StreamPolicy
    memory: MemorySettings
    tracing: TracingSettings
    serverless: ServerlessSettings
    logging: LoggingSettings


def load_settings(
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings.

    Args:
        config_file: TOML file; when None, ``DATAMCP_CONFIG`` is consulted.
        overrides: dotted keys from command-line flags (None values ignored).
        environ: the environment to read (defaults to ``os.environ``).

    Raises:
        ConfigError: listing every invalid value and how to fix it.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    raw = merge(config_file or env.get("DATAMCP_CONFIG"), overrides or {}, env, problems)
    settings = _build(Reader(raw, problems))
    if problems:
        raise ConfigError(problems)
    return settings


def default_data_root(data_dir: Path) -> Path:
    """Where pipelines read and write files when ``pipelines.data_roots`` is not set."""
    return data_dir / "files"


def _build(r: Reader) -> Settings:
    data_dir = Path(r.value("data_dir")).expanduser()
    database_url = r.value("database_url") or f"sqlite+aiosqlite:///{data_dir / 'datamcp.db'}"
    if not database_url.startswith(("sqlite", "postgresql", "postgres")):
        r.fail("database_url", "only sqlite+aiosqlite:/// and postgresql:// URLs are supported")
    server = _server(r, database_url)
    tls = r.section(TlsSettings, "tls")
    if (tls.cert_file is None) != (tls.key_file is None):
        r.fail("tls.cert_file", "--tls-cert and --tls-key must be given together")
    if tls.client_ca_file and not tls.cert_file:
        r.fail("tls.client_ca_file", "mutual TLS needs --tls-cert and --tls-key as well")
    auth = _auth(r, server)
    url_secret = r.value("database_url_secret")
    if url_secret is not None and not SECRET_ARN.match(url_secret):
        r.fail(
            "database_url_secret",
            "expected arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME or "
            "arn:aws:ssm:REGION:ACCOUNT:parameter/NAME",
        )
    replicas = r.section(ReplicaSettings, "replicas")
    if replicas.stale_after < 2 * replicas.heartbeat_interval:
        r.fail("replicas.stale_after", "must be at least 2 x replicas.heartbeat_interval")
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        database_url_secret=url_secret,
        database_migrate=r.value("database_migrate"),
        server=server,
        tls=tls,
        auth=auth,
        rate_limit=RateLimitSettings(
            enabled=r.value("rate_limit.enabled"),
            default=Quota(r.value("rate_limit.rate"), r.value("rate_limit.burst")),
            methods=sections.method_quotas(r),
        ),
        health=r.section(HealthSettings, "health", dependencies=sections.dependencies(r)),
        replicas=replicas,
        events=r.section(
            EventSettings,
            "events",
            triggers=r.tables("events.triggers"),
            brokers=sections.brokers(r),
        ),
        agents=_agents(r, replicas),
        pipelines=_pipelines(r, data_dir, replicas),
        streams=r.section(StreamPolicy, "streams"),
        memory=sections.memory(r),
        tracing=r.section(TracingSettings, "tracing"),
        serverless=ServerlessSettings(r.queue_url("serverless.dead_letter_queue_url")),
        logging=r.section(LoggingSettings, "logging", level=r.value("logging.level").upper()),
    )


def _server(r: Reader, database_url: str) -> ServerSettings:
    host, port = _parse_listen(r)
    server = r.section(ServerSettings, "server", host=host, port=port, insecure=r.value("insecure"))
    if server.workers > 1 and not database_url.startswith(("postgresql", "postgres")):
        r.fail(
            "server.workers",
            "more than one worker needs PostgreSQL (database_url = postgresql://...): "
            "an SQLite file has one writer, and processes on it cannot wake each other",
        )
    if server.workers > 1 and port == 0:
        r.fail("server.workers", "workers share one port: give it (--listen HOST:PORT, not :0)")
    return server


def _parse_listen(r: Reader) -> tuple[str, int]:
    text = r.value("listen")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        r.fail("listen", f"{text!r} is not HOST:PORT (for example 127.0.0.1:50051; port 0 = any)")
        host, _, port_text = str(BY_KEY["listen"].default).rpartition(":")
    return host, int(port_text)


def _auth(r: Reader, server: ServerSettings) -> AuthSettings:
    auth = AuthSettings(
        api_keys=sections.api_keys(r),
        jwt=r.section(JwtSettings, "auth.jwt"),
        method_roles=sections.method_roles(r),
    )
    default_tenant = auth.jwt.default_tenant
    if default_tenant is not None and not valid_tenant(default_tenant):
        r.fail("auth.jwt.default_tenant", "1-128 letters, digits, - _ .")
    secret = auth.jwt.hs256_secret
    if secret is not None and len(secret) < 32:
        r.fail("auth.jwt.hs256_secret", "use at least 32 characters (a random secret)")
    if not auth.enabled and not server.insecure and not _is_loopback(server.host):
        r.fail(
            "listen",
            f"refusing to bind {server.host} without authentication: configure API keys "
            "or JWT, bind a loopback address, or pass --insecure",
        )
    return auth


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _agents(r: Reader, replicas: ReplicaSettings) -> AgentSettings:
    policy = r.section(
        TaskPolicy,
        "agents",
        stale_after=replicas.stale_after,
        orphan_interval=replicas.check_interval,
    )
    if policy.default_timeout > policy.max_timeout:
        r.fail("agents.default_timeout", "must not exceed agents.max_timeout")
    return r.section(
        AgentSettings,
        "agents",
        policy=policy,
        grants=sections.grants(r),
        plugins=sections.plugins(r),
        sql_connections=sections.sql_connections(r, "agents.sql_connections"),
        http_apis=sections.http_apis(r, "agents.http_apis"),
        profile_roots=tuple(Path(p) for p in sections.directories(r, "agents.profile_roots")),
        task_queue_url=r.queue_url("agents.task_queue_url"),
    )


def _pipelines(r: Reader, data_dir: Path, replicas: ReplicaSettings) -> PipelineSettings:
    roots = (
        [str(default_data_root(data_dir))]  # not configured: one confined root in the data dir
        if r.raw["pipelines.data_roots"] is None
        else sections.directories(r, "pipelines.data_roots")
    )
    return r.section(
        PipelineSettings,
        "pipelines",
        policy=r.section(
            RunPolicy,
            "pipelines",
            stale_after=replicas.stale_after,
            recovery_interval=replicas.check_interval,
        ),
        data_roots=tuple(Path(p).expanduser() for p in roots),
        sql_connections=sections.sql_connections(r, "pipelines.sql_connections"),
        http_apis=sections.http_apis(r, "pipelines.http_apis"),
        memory_limit=sections.memory_limit(r),
    )
