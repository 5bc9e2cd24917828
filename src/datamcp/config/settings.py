"""Typed, validated settings built from the field table.

``load_settings`` merges defaults, an optional TOML config file, ``DATAMCP_*``
environment variables and command-line values, then validates everything at
once so a bad start reports every problem with what to do about it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamcp.config.reader import Reader, merge
from datamcp.core.auth import ApiKey, AuthSettings, JwtSettings
from datamcp.core.context import valid_tenant
from datamcp.core.errors import ConfigError

#: Where ``database_url_secret`` may point: a Secrets Manager secret or an SSM parameter.
SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+"
    r"|ssm:[a-z0-9-]+:\d{12}:parameter/[\w/.-]+)$"
)


@dataclass(frozen=True, slots=True)
class Quota:
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    enabled: bool = True
    default: Quota = Quota(200.0, 400)
    methods: Mapping[str, Quota] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    insecure: bool = False
    workers: int = 1
    reuse_port: bool = False
    shutdown_grace: float = 10.0
    drain_delay: float = 0.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 0
    compression: str = "none"
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    keepalive_min_client_interval: float = 10.0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Dependency:
    name: str
    target: str
    critical: bool = False


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval: float = 5.0
    check_timeout: float = 2.0
    dependencies: tuple[Dependency, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """How processes sharing one database watch each other (core.instances)."""

    heartbeat_interval: float = 2.0
    stale_after: float = 8.0
    check_interval: float = 2.0


@dataclass(frozen=True, slots=True)
class EventSettings:
    max_event_bytes: int = 256 * 1024
    max_batch: int = 1000
    retention_age: float = 7 * 86400.0
    retention_count: int = 0
    max_attempts: int = 5
    visibility_timeout: float = 30.0
    poll_interval: float = 0.25
    triggers: tuple[Mapping[str, Any], ...] = ()
    brokers: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class AgentSettings:
    strategy: str = "least_loaded"
    queue_size: int = 10_000
    default_timeout: float = 300.0
    min_timeout: float = 0.01
    max_timeout: float = 86_400.0
    max_attempts: int = 3
    retry_base_delay: float = 0.1
    retry_max_delay: float = 10.0
    max_input_bytes: int = 1024 * 1024
    max_call_depth: int = 8
    recovery: str = "retry"
    remote_disconnect: str = "requeue"
    heartbeat_interval: float = 10.0
    #: Each {agent, owner, tenants}: see ``core.agents.remote.Grant``.
    grants: tuple[Mapping[str, Any], ...] = ()
    plugins: tuple[str, ...] = ()
    sql_connections: Mapping[str, str] = field(default_factory=dict)
    sql_row_limit: int = 1000
    http_apis: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    profile_roots: tuple[Path, ...] = ()
    task_queue_url: str | None = None
    task_queue_region: str | None = None
    task_queue_endpoint_url: str | None = None
    task_queue_max_timeout: float = 45.0


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    data_roots: tuple[Path, ...] = ()
    sql_connections: Mapping[str, str] = field(default_factory=dict)
    http_apis: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    batch_size: int = 10_000
    run_timeout: float = 3600.0
    max_retries: int = 2
    retry_base_delay: float = 0.5
    max_concurrent_runs: int = 4
    rejects_kept: int = 1000
    max_lookup_rows: int = 1_000_000
    schedule_tick: float = 1.0
    progress_interval: float = 1.0
    memory_limit: str = "512MB"
    threads: int = 0
    chunk_rows: int = 100_000
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None


@dataclass(frozen=True, slots=True)
class StreamSettings:
    lease: float = 6.0
    poll_interval: float = 0.5
    batch: int = 500
    max_jobs_per_tenant: int = 100


@dataclass(frozen=True, slots=True)
class MemoryStoreSettings:
    id: str
    url: str
    primary: bool = False


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """``stores`` empty means one store, ``primary``, in the application database."""

    stores: tuple[MemoryStoreSettings, ...] = ()
    history_depth: int = 10
    max_value_bytes: int = 256 * 1024
    purge_interval: float = 60.0
    purge_batch: int = 500
    policies: tuple[Mapping[str, Any], ...] = ()
    schedules: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class TracingSettings:
    exporter: str = "none"
    sample_ratio: float = 1.0
    otlp_endpoint: str = "http://127.0.0.1:4317"
    service_name: str = "datamcp"


@dataclass(frozen=True, slots=True)
class ServerlessSettings:
    """What only the Lambda handlers read."""

    dead_letter_queue_url: str | None = None


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path(".datamcp")
    database_url: str = ""
    database_url_secret: str | None = None
    database_migrate: str = "auto"
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)
    events: EventSettings = field(default_factory=EventSettings)
    agents: AgentSettings = field(default_factory=AgentSettings)
    pipelines: PipelineSettings = field(default_factory=PipelineSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    serverless: ServerlessSettings = field(default_factory=ServerlessSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


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
    settings = _build(raw, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _build(raw: Mapping[str, Any], problems: list[str]) -> Settings:
    r = Reader(raw, problems)
    data_dir = Path(r.value("data_dir")).expanduser()
    database_url = r.value("database_url") or f"sqlite+aiosqlite:///{data_dir / 'datamcp.db'}"
    host, port = _parse_listen(r)
    server = ServerSettings(
        host=host,
        port=port,
        insecure=r.value("insecure"),
        workers=r.value("server.workers"),
        reuse_port=r.value("server.reuse_port"),
        shutdown_grace=r.value("server.shutdown_grace"),
        drain_delay=r.value("server.drain_delay"),
        max_message_bytes=r.value("server.max_message_bytes"),
        max_concurrent_rpcs=r.value("server.max_concurrent_rpcs"),
        compression=r.value("server.compression"),
        keepalive_time=r.value("server.keepalive_time"),
        keepalive_timeout=r.value("server.keepalive_timeout"),
        keepalive_min_client_interval=r.value("server.keepalive_min_client_interval"),
    )
    if server.workers > 1 and not database_url.startswith(("postgresql", "postgres")):
        r.fail(
            "server.workers",
            "more than one worker needs PostgreSQL (database_url = postgresql://...): "
            "an SQLite file has one writer, and processes on it cannot wake each other",
        )
    if server.workers > 1 and port == 0:
        r.fail("server.workers", "workers share one port: give it (--listen HOST:PORT, not :0)")
    tls = TlsSettings(
        cert_file=r.value("tls.cert_file"),
        key_file=r.value("tls.key_file"),
        client_ca_file=r.value("tls.client_ca_file"),
    )
    if (tls.cert_file is None) != (tls.key_file is None):
        r.fail("tls.cert_file", "--tls-cert and --tls-key must be given together")
    if tls.client_ca_file and not tls.cert_file:
        r.fail("tls.client_ca_file", "mutual TLS needs --tls-cert and --tls-key as well")
    auth = AuthSettings(
        api_keys=_api_keys(r),
        jwt=JwtSettings(
            hs256_secret=r.value("auth.jwt.hs256_secret"),
            rs256_public_key_file=r.value("auth.jwt.rs256_public_key_file"),
            jwks_file=r.value("auth.jwt.jwks_file"),
            issuer=r.value("auth.jwt.issuer"),
            audience=r.value("auth.jwt.audience"),
            tenant_claim=r.value("auth.jwt.tenant_claim"),
            roles_claim=r.value("auth.jwt.roles_claim"),
            leeway=r.value("auth.jwt.leeway"),
            default_tenant=r.value("auth.jwt.default_tenant"),
        ),
        method_roles=_method_roles(r),
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
    url_secret = r.value("database_url_secret")
    if url_secret is not None and not SECRET_ARN.match(url_secret):
        r.fail(
            "database_url_secret",
            "expected arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME or "
            "arn:aws:ssm:REGION:ACCOUNT:parameter/NAME",
        )
    settings = Settings(
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
            methods=_method_quotas(r),
        ),
        health=HealthSettings(
            interval=r.value("health.interval"),
            check_timeout=r.value("health.check_timeout"),
            dependencies=_dependencies(r),
        ),
        replicas=_replicas(r),
        events=EventSettings(
            max_event_bytes=r.value("events.max_event_bytes"),
            max_batch=r.value("events.max_batch"),
            retention_age=r.value("events.retention_age"),
            retention_count=r.value("events.retention_count"),
            max_attempts=r.value("events.max_attempts"),
            visibility_timeout=r.value("events.visibility_timeout"),
            poll_interval=r.value("events.poll_interval"),
            triggers=r.tables("events.triggers"),
            brokers=_brokers(r),
        ),
        agents=_agents(r),
        pipelines=_pipelines(r, data_dir),
        streams=StreamSettings(
            lease=r.value("streams.lease"),
            poll_interval=r.value("streams.poll_interval"),
            batch=r.value("streams.batch"),
            max_jobs_per_tenant=r.value("streams.max_jobs_per_tenant"),
        ),
        memory=_memory(r),
        tracing=TracingSettings(
            exporter=r.value("tracing.exporter"),
            sample_ratio=r.value("tracing.sample_ratio"),
            otlp_endpoint=r.value("tracing.otlp_endpoint"),
            service_name=r.value("tracing.service_name"),
        ),
        serverless=ServerlessSettings(
            dead_letter_queue_url=r.queue_url("serverless.dead_letter_queue_url"),
        ),
        logging=LoggingSettings(
            level=r.value("logging.level").upper(),
            format=r.value("logging.format"),
        ),
    )
    if not database_url.startswith(("sqlite", "postgresql", "postgres")):
        r.fail("database_url", "only sqlite+aiosqlite:/// and postgresql:// URLs are supported")
    return settings


def _parse_listen(r: Reader) -> tuple[str, int]:
    text = r.value("listen")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        r.fail("listen", f"{text!r} is not HOST:PORT (for example 127.0.0.1:50051; port 0 = any)")
        return "127.0.0.1", 50051
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_keys(r: Reader) -> tuple[ApiKey, ...]:
    value = r.raw["auth.api_keys"]
    if not isinstance(value, list):
        r.fail("auth.api_keys", "expected a list of tables")
        return ()
    keys: list[ApiKey] = []
    for i, item in enumerate(value):
        digest = str(item.get("sha256", "")).lower() if isinstance(item, dict) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            r.fail(
                "auth.api_keys",
                f"entry {i}: sha256 must be the hex SHA-256 of the key "
                "(print one with `datamcp auth hash-key`); plain keys are never stored",
            )
            continue
        assert isinstance(item, dict)
        tenant = str(item.get("tenant", "default"))
        if not valid_tenant(tenant):
            r.fail("auth.api_keys", f"entry {i}: tenant must be letters, digits, - _ .")
            continue
        roles = item.get("roles", [])
        keys.append(
            ApiKey(
                name=str(item.get("name", f"key-{i}")),
                sha256=digest,
                subject=str(item.get("subject", item.get("name", f"key-{i}"))),
                tenant=tenant,
                roles=tuple(str(x) for x in roles) if isinstance(roles, list) else (),
            )
        )
    return tuple(keys)


def _method_roles(r: Reader) -> dict[str, tuple[str, ...]]:
    value = r.raw["auth.method_roles"]
    if not isinstance(value, dict) or not all(
        isinstance(v, list) and k.startswith("/") for k, v in value.items()
    ):
        r.fail("auth.method_roles", 'expected {"/pkg.Service/Method": ["role", ...]}')
        return {}
    return {k: tuple(str(x) for x in v) for k, v in value.items()}


def _method_quotas(r: Reader) -> dict[str, Quota]:
    value = r.raw["rate_limit.methods"]
    out: dict[str, Quota] = {}
    if not isinstance(value, dict):
        r.fail("rate_limit.methods", 'expected {"/pkg.Service/Method": {rate, burst}}')
        return out
    for method, quota in value.items():
        try:
            rate, burst = float(quota["rate"]), int(quota["burst"])
            if rate <= 0 or burst < 1:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            r.fail("rate_limit.methods", f"{method}: needs rate > 0 and burst >= 1")
            continue
        out[method] = Quota(rate, burst)
    return out


def _brokers(r: Reader) -> tuple[Mapping[str, Any], ...]:
    brokers = r.tables("events.brokers")
    for i, b in enumerate(brokers):
        kind = b.get("kind")
        needs = {"eventbridge": "bus_name", "sqs": "queue_url"}.get(str(kind))
        if needs is None:
            r.fail("events.brokers", f"entry {i}: kind must be eventbridge or sqs")
        elif not b.get(needs):
            r.fail("events.brokers", f"entry {i}: {kind} needs {needs}")
    return brokers


def _grants(r: Reader) -> tuple[Mapping[str, Any], ...]:
    grants = r.tables("agents.grants")
    for i, g in enumerate(grants):
        tenants = g.get("tenants")
        if (
            set(g) != {"agent", "owner", "tenants"}
            or not all(isinstance(g[k], str) and g[k] for k in ("agent", "owner"))
            or not isinstance(tenants, list)
            or not tenants
            or not all(isinstance(t, str) and t for t in tenants)
        ):
            r.fail(
                "agents.grants",
                f'entry {i}: expected {{agent = "name", owner = "tenant", '
                'tenants = ["tenant", ...]}',
            )
    return grants


def _agents(r: Reader) -> AgentSettings:
    plugins = r.raw["agents.plugins"]
    if not isinstance(plugins, list) or not all(isinstance(p, str) and ":" in p for p in plugins):
        r.fail("agents.plugins", 'expected a list of "module:Class" strings')
        plugins = []
    sql = r.raw["agents.sql_connections"]
    if not isinstance(sql, dict) or not all(isinstance(v, str) for v in sql.values()):
        r.fail("agents.sql_connections", "expected a table of name = SQLAlchemy URL")
        sql = {}
    apis = r.raw["agents.http_apis"]
    if not isinstance(apis, dict) or not all(
        isinstance(v, dict) and str(v.get("base_url", "")).startswith(("http://", "https://"))
        for v in apis.values()
    ):
        r.fail("agents.http_apis", "expected a table of name = {base_url = 'https://...', ...}")
        apis = {}
    roots = r.raw["agents.profile_roots"]
    if not isinstance(roots, list) or not all(isinstance(p, str) for p in roots):
        r.fail("agents.profile_roots", "expected a list of directories")
        roots = []
    settings = AgentSettings(
        strategy=r.value("agents.strategy"),
        queue_size=r.value("agents.queue_size"),
        default_timeout=r.value("agents.default_timeout"),
        min_timeout=r.value("agents.min_timeout"),
        max_timeout=r.value("agents.max_timeout"),
        max_attempts=r.value("agents.max_attempts"),
        retry_base_delay=r.value("agents.retry_base_delay"),
        retry_max_delay=r.value("agents.retry_max_delay"),
        max_input_bytes=r.value("agents.max_input_bytes"),
        max_call_depth=r.value("agents.max_call_depth"),
        recovery=r.value("agents.recovery"),
        remote_disconnect=r.value("agents.remote_disconnect"),
        heartbeat_interval=r.value("agents.heartbeat_interval"),
        grants=_grants(r),
        plugins=tuple(plugins),
        sql_connections=dict(sql),
        sql_row_limit=r.value("agents.sql_row_limit"),
        http_apis=dict(apis),
        profile_roots=tuple(Path(p) for p in roots),
        task_queue_url=r.queue_url("agents.task_queue_url"),
        task_queue_region=r.value("agents.task_queue_region"),
        task_queue_endpoint_url=r.value("agents.task_queue_endpoint_url"),
        task_queue_max_timeout=r.value("agents.task_queue_max_timeout"),
    )
    if settings.default_timeout > settings.max_timeout:
        r.fail("agents.default_timeout", "must not exceed agents.max_timeout")
    return settings


def _replicas(r: Reader) -> ReplicaSettings:
    settings = ReplicaSettings(
        heartbeat_interval=r.value("replicas.heartbeat_interval"),
        stale_after=r.value("replicas.stale_after"),
        check_interval=r.value("replicas.check_interval"),
    )
    if settings.stale_after < 2 * settings.heartbeat_interval:
        r.fail("replicas.stale_after", "must be at least 2 x replicas.heartbeat_interval")
    return settings


def _dependencies(r: Reader) -> tuple[Dependency, ...]:
    value = r.raw["health.dependencies"]
    if not isinstance(value, list):
        r.fail("health.dependencies", "expected a list of {name, target, critical}")
        return ()
    deps: list[Dependency] = []
    for i, item in enumerate(value):
        target = str(item.get("target", "")) if isinstance(item, dict) else ""
        if not target.startswith(("tcp://", "http://", "https://")) or not isinstance(item, dict):
            r.fail(
                "health.dependencies", f"entry {i}: target must be tcp://host:port or http(s)://"
            )
            continue
        deps.append(
            Dependency(str(item.get("name", target)), target, bool(item.get("critical", False)))
        )
    return tuple(deps)


_STRATEGIES = ("timestamp_wins", "source_priority", "merge", "manual")
_TIE_BREAKS = ("timestamp_wins", "source_priority", "manual")


def _memory(r: Reader) -> MemorySettings:
    """The memory section; store ids, URLs, strategies and cron lines are checked here."""
    stores: list[MemoryStoreSettings] = []
    for i, item in enumerate(r.tables("memory.stores")):
        store_id, url = str(item.get("id", "")), str(item.get("url", ""))
        if not re.match(r"^[a-z0-9][a-z0-9_-]{0,62}$", store_id):
            r.fail("memory.stores", f"entry {i}: id must be lower-case letters, digits, - _")
        elif not url.startswith(("sqlite", "postgresql", "postgres")):
            r.fail("memory.stores", f"entry {i} ({store_id}): url: sqlite:/// or postgresql://")
        else:
            stores.append(MemoryStoreSettings(store_id, url, bool(item.get("primary", False))))
    ids = [s.id for s in stores]
    if len(set(ids)) != len(ids):
        r.fail("memory.stores", "store ids must be unique")
    if stores and sum(s.primary for s in stores) != 1:
        r.fail("memory.stores", "exactly one store must have primary = true")
    known = set(ids) or {"primary"}
    policies = r.tables("memory.policies")
    for i, p in enumerate(policies):
        if str(p.get("strategy", "timestamp_wins")).lower() not in _STRATEGIES:
            r.fail("memory.policies", f"entry {i}: strategy: {', '.join(_STRATEGIES)}")
        if str(p.get("tie_break", "timestamp_wins")).lower() not in _TIE_BREAKS:
            r.fail("memory.policies", f"entry {i}: tie_break: {', '.join(_TIE_BREAKS)}")
        if not set(p.get("priority", [])) <= known:
            r.fail("memory.policies", f"entry {i}: priority names unknown stores")
    schedules = r.tables("memory.schedules")
    for i, sch in enumerate(schedules):
        from croniter import croniter

        if not sch.get("name") or not croniter.is_valid(str(sch.get("cron", ""))):
            r.fail("memory.schedules", f"entry {i}: needs a name and a valid cron line")
        if str(sch.get("strategy", "timestamp_wins")).lower() not in _STRATEGIES:
            r.fail("memory.schedules", f"entry {i}: strategy: {', '.join(_STRATEGIES)}")
        if not set(sch.get("stores", [])) <= known:
            r.fail("memory.schedules", f"entry {i}: stores names unknown stores")
    return MemorySettings(
        stores=tuple(stores),
        history_depth=r.value("memory.history_depth"),
        max_value_bytes=r.value("memory.max_value_bytes"),
        purge_interval=r.value("memory.purge_interval"),
        purge_batch=r.value("memory.purge_batch"),
        policies=policies,
        schedules=schedules,
    )


def default_data_root(data_dir: Path) -> Path:
    """Where pipelines read and write files when ``pipelines.data_roots`` is not set."""
    return data_dir / "files"


def _pipelines(r: Reader, data_dir: Path) -> PipelineSettings:
    roots = r.raw["pipelines.data_roots"]
    if roots is None:  # not configured: one confined root inside the data dir
        roots = [str(default_data_root(data_dir))]
    if not isinstance(roots, list) or not all(isinstance(p, str) and p for p in roots):
        r.fail("pipelines.data_roots", "expected a list of directories")
        roots = []
    sql = r.raw["pipelines.sql_connections"]
    if not isinstance(sql, dict) or not all(isinstance(v, str) and v for v in sql.values()):
        r.fail("pipelines.sql_connections", "expected a table of name = SQLAlchemy URL")
        sql = {}
    apis = r.raw["pipelines.http_apis"]
    if not isinstance(apis, dict) or not all(
        isinstance(v, dict) and str(v.get("base_url", "")).startswith(("http://", "https://"))
        for v in apis.values()
    ):
        r.fail("pipelines.http_apis", "expected a table of name = {base_url = 'https://...', ...}")
        apis = {}
    return PipelineSettings(
        data_roots=tuple(Path(p).expanduser() for p in roots),
        sql_connections=dict(sql),
        http_apis=dict(apis),
        batch_size=r.value("pipelines.batch_size"),
        run_timeout=r.value("pipelines.run_timeout"),
        max_retries=r.value("pipelines.max_retries"),
        retry_base_delay=r.value("pipelines.retry_base_delay"),
        max_concurrent_runs=r.value("pipelines.max_concurrent_runs"),
        rejects_kept=r.value("pipelines.rejects_kept"),
        max_lookup_rows=r.value("pipelines.max_lookup_rows"),
        schedule_tick=r.value("pipelines.schedule_tick"),
        progress_interval=r.value("pipelines.progress_interval"),
        memory_limit=_memory_limit(r),
        threads=r.value("pipelines.threads"),
        chunk_rows=r.value("pipelines.chunk_rows"),
        s3_region=r.value("pipelines.s3_region"),
        s3_endpoint_url=r.value("pipelines.s3_endpoint_url"),
    )


def _memory_limit(r: Reader) -> str:
    value = str(r.value("pipelines.memory_limit")).strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value):
        r.fail("pipelines.memory_limit", "expected a size such as '512MB' or '2GB'")
        return "512MB"
    return value
