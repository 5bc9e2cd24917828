"""The table of every setting: its dotted key, type, default, bounds, env var and flag.

One table drives the config file, the ``DATAMCP_*`` environment variables, the
command-line flags, the checks of every value (``config.reader``) and the
configuration reference (docs/configuration.md), so none of them can disagree.
Precedence, lowest first: default, config file, environment, flag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: The kinds of value: ``file`` is the path of a file that must exist;
#: ``json`` is a list or table (TOML in the config file, JSON in the environment).
KINDS = ("str", "file", "int", "float", "bool", "json")


@dataclass(frozen=True, slots=True)
class Field:
    """One setting.

    A setting whose default is None is optional (an empty string unsets it).
    Numbers are never negative: ``minimum`` (default 0) and ``maximum`` bound
    them. ``choices`` are the allowed strings (matched case-insensitively, read
    lower-cased).
    """

    key: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    minimum: float = 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.key

    @property
    def env(self) -> str:
        return "DATAMCP_" + self.key.upper().replace(".", "_")

    @property
    def allowed(self) -> str:
        """The bounds or choices, as the reference shows them."""
        if self.choices:
            return " / ".join(self.choices)
        if self.kind in ("int", "float"):
            if self.maximum is not None:
                return f"{self.minimum} to {self.maximum}"
            return f">= {self.minimum}"
        if self.kind == "file":
            return "an existing file"
        return ""


FIELDS: tuple[Field, ...] = (
    Field("listen", "str", "127.0.0.1:50051", "HOST:PORT the gRPC server binds", "--listen"),
    Field("data_dir", "str", ".datamcp", "directory holding the SQLite file", "--data-dir"),
    Field(
        "database_url",
        "str",
        None,
        "SQLAlchemy URL; default sqlite+aiosqlite:///DATA_DIR/datamcp.db "
        "(postgresql://... uses asyncpg)",
        "--database-url",
    ),
    Field(
        "database_url_secret",
        "str",
        None,
        "ARN of a Secrets Manager secret or SSM parameter holding the database URL (or an "
        "RDS-style JSON secret); read once at start, replaces database_url",
    ),
    Field(
        "database_migrate",
        "str",
        "auto",
        "auto: apply migrations at start (under a database lock) | verify: only check the "
        "schema is current (the deployment runs `datamcp db upgrade`; no DDL rights needed)",
        choices=("auto", "verify"),
    ),
    Field("insecure", "bool", False, "allow a non-loopback bind without auth", "--insecure"),
    Field(
        "server.workers",
        "int",
        1,
        "server processes sharing the listen port (SO_REUSEPORT), each a full replica; "
        "more than 1 needs PostgreSQL and an explicit port",
        "--workers",
        minimum=1,
        maximum=64,
    ),
    Field(
        "server.reuse_port",
        "bool",
        False,
        "bind the listen port with SO_REUSEPORT (set for each worker by --workers)",
    ),
    Field("server.shutdown_grace", "float", 10.0, "seconds in-flight calls get on SIGTERM"),
    Field("server.drain_delay", "float", 0.0, "seconds NOT_SERVING shows before calls are refused"),
    Field(
        "server.max_message_bytes",
        "int",
        4 * 1024 * 1024,
        "max request/response size",
        minimum=1024,
    ),
    Field("server.max_concurrent_rpcs", "int", 0, "0 = unlimited; beyond it RESOURCE_EXHAUSTED"),
    Field(
        "server.compression",
        "str",
        "none",
        "compression of responses (server default)",
        choices=("none", "gzip", "deflate"),
    ),
    Field(
        "server.keepalive_time",
        "float",
        60.0,
        "seconds between server keepalive pings",
        minimum=1.0,
    ),
    Field(
        "server.keepalive_timeout",
        "float",
        20.0,
        "seconds to wait for a keepalive ack",
        minimum=1.0,
    ),
    Field(
        "server.keepalive_min_client_interval",
        "float",
        10.0,
        "shortest client keepalive ping interval accepted (seconds)",
        minimum=1.0,
    ),
    Field("tls.cert_file", "file", None, "PEM server certificate (enables TLS)", "--tls-cert"),
    Field("tls.key_file", "file", None, "PEM private key for --tls-cert", "--tls-key"),
    Field(
        "tls.client_ca_file",
        "file",
        None,
        "PEM CA bundle; when set, clients must present a certificate (mTLS)",
        "--tls-client-ca",
    ),
    Field("auth.api_keys", "json", [], "list of {name, sha256, subject, tenant, roles}"),
    Field("auth.jwt.hs256_secret", "str", None, "shared secret for HS256 bearer tokens"),
    Field("auth.jwt.rs256_public_key_file", "file", None, "PEM public key for RS256 tokens"),
    Field("auth.jwt.jwks_file", "file", None, "JWKS JSON file for RS256 tokens (by kid)"),
    Field("auth.jwt.issuer", "str", None, "required iss claim"),
    Field("auth.jwt.audience", "str", None, "required aud claim"),
    Field("auth.jwt.tenant_claim", "str", "tenant", "claim holding the tenant"),
    Field("auth.jwt.roles_claim", "str", "roles", "claim holding roles (list or spaced string)"),
    Field("auth.jwt.leeway", "float", 30.0, "clock skew tolerance in seconds"),
    Field(
        "auth.jwt.default_tenant",
        "str",
        None,
        "tenant of tokens without the tenant claim (unset: such tokens are refused)",
    ),
    Field(
        "auth.method_roles",
        "json",
        {},
        "map of full method (or /package.Service/*) to roles, any of which grants access; "
        "added to the built-in table (GetMetrics: admin, operator)",
    ),
    Field("rate_limit.enabled", "bool", True, "token bucket per principal"),
    Field("rate_limit.rate", "float", 200.0, "tokens per second per principal", minimum=0.001),
    Field("rate_limit.burst", "int", 400, "bucket size per principal", minimum=1),
    Field("rate_limit.methods", "json", {}, "map of full method to {rate, burst}"),
    Field(
        "events.max_event_bytes", "int", 256 * 1024, "largest event data (JSON bytes)", minimum=1
    ),
    Field("events.max_batch", "int", 1000, "most events in one PublishBatch", minimum=1),
    Field("events.retention_age", "float", 7 * 86400.0, "seconds events are kept; 0 = forever"),
    Field("events.retention_count", "int", 0, "most events kept per tenant; 0 = no limit"),
    Field("events.max_attempts", "int", 5, "default deliveries before dead-lettering", minimum=1),
    Field(
        "events.visibility_timeout",
        "float",
        30.0,
        "default seconds a delivery is leased",
        minimum=0.01,
    ),
    Field(
        "events.poll_interval",
        "float",
        0.25,
        "seconds between a consumer's store reads when nothing woke it (commits here, and "
        "on PostgreSQL in other replicas, wake it at once; this catches retries coming due)",
        minimum=0.01,
    ),
    Field(
        "events.triggers",
        "json",
        [],
        "list of {name, types, source, subject, action, params, tenant}: event pattern -> action",
    ),
    Field(
        "events.brokers",
        "json",
        [],
        "forward events to AWS: list of {kind: eventbridge|sqs, bus_name|queue_url, region, "
        "endpoint_url, types, failure_threshold, recovery_time}",
    ),
    Field(
        "agents.strategy",
        "str",
        "least_loaded",
        "how a task picks among the agents that can run it",
        choices=("least_loaded", "round_robin", "weighted"),
    ),
    Field("agents.queue_size", "int", 10_000, "most tasks waiting for a free agent", minimum=1),
    Field(
        "agents.default_timeout",
        "float",
        300.0,
        "seconds a task may run when none is given",
        minimum=0.001,
    ),
    Field("agents.min_timeout", "float", 0.01, "shortest task timeout accepted"),
    Field("agents.max_timeout", "float", 86_400.0, "longest task timeout accepted", minimum=0.001),
    Field("agents.max_attempts", "int", 3, "default attempts for retryable task errors", minimum=1),
    Field("agents.retry_base_delay", "float", 0.1, "first retry backoff bound, seconds"),
    Field("agents.retry_max_delay", "float", 10.0, "largest retry backoff, seconds"),
    Field(
        "agents.max_input_bytes", "int", 1024 * 1024, "largest task input (JSON bytes)", minimum=1
    ),
    Field("agents.max_call_depth", "int", 8, "longest agent-to-agent call chain", minimum=1),
    Field(
        "agents.recovery",
        "str",
        "retry",
        "tasks a dead process left running: retry (re-run) | fail",
        choices=("retry", "fail"),
    ),
    Field(
        "agents.remote_disconnect",
        "str",
        "requeue",
        "in-flight tasks of a remote agent that disconnects: requeue | fail",
        choices=("requeue", "fail"),
    ),
    Field(
        "agents.heartbeat_interval",
        "float",
        10.0,
        "seconds between remote agent heartbeats",
        minimum=0.01,
    ),
    Field(
        "agents.grants",
        "json",
        [],
        "remote agents shared beyond the tenant that connects them: list of {agent = NAME, "
        'owner = TENANT, tenants = [TENANT, ...] or ["*"]}',
    ),
    Field(
        "agents.plugins",
        "json",
        [],
        'plugin agents by import path, list of "module:Class" (also entry points datamcp.agents)',
    ),
    Field(
        "agents.sql_connections",
        "json",
        {},
        "sql agent: map of connection name to SQLAlchemy URL (read-only use)",
    ),
    Field("agents.sql_row_limit", "int", 1000, "sql agent: most rows a query returns", minimum=1),
    Field(
        "agents.http_apis",
        "json",
        {},
        "http agent: map of API name to {base_url, headers, timeout, rate, burst, max_attempts, "
        "failure_threshold, recovery_time}",
    ),
    Field(
        "agents.profile_roots",
        "json",
        [],
        "profile agent: directories whose CSV/JSONL files it may read",
    ),
    Field(
        "agents.task_queue_url",
        "str",
        None,
        "SQS queue URL for SubmitTask with EXECUTION_MODE_QUEUED (run by the Lambda tasks handler)",
    ),
    Field("agents.task_queue_region", "str", None, "task queue region; default AWS_REGION"),
    Field("agents.task_queue_endpoint_url", "str", None, "task queue endpoint (moto, LocalStack)"),
    Field(
        "agents.task_queue_max_timeout",
        "float",
        45.0,
        "longest task timeout queued mode accepts (the tasks function's timeout less its "
        "hand-back margin and start-up); also the timeout of queued tasks that give none",
        minimum=0.001,
    ),
    Field(
        "streams.lease",
        "float",
        6.0,
        "seconds a process holds a stream job without checkpointing; a dead process's jobs "
        "resume elsewhere after it",
        minimum=0.5,
    ),
    Field(
        "streams.poll_interval",
        "float",
        0.5,
        "seconds an idle stream job waits between looks",
        minimum=0.01,
    ),
    Field(
        "streams.batch",
        "int",
        500,
        "most input events a stream job applies per checkpoint",
        minimum=1,
    ),
    Field(
        "streams.max_jobs_per_tenant", "int", 100, "most stream jobs one tenant may have", minimum=1
    ),
    Field(
        "memory.stores",
        "json",
        [],
        "memory stores: list of {id, url, primary}; none = one store 'primary' in the app database",
    ),
    Field("memory.history_depth", "int", 10, "previous versions kept per memory key"),
    Field(
        "memory.max_value_bytes", "int", 256 * 1024, "largest memory value (JSON bytes)", minimum=1
    ),
    Field(
        "memory.purge_interval",
        "float",
        60.0,
        "seconds between sweeps tombstoning expired memory records on the primary (0 = off)",
    ),
    Field(
        "memory.purge_batch", "int", 500, "most expired memory records one sweep purges", minimum=1
    ),
    Field(
        "memory.policies",
        "json",
        [],
        "per namespace prefix: list of {prefix, strategy, tie_break, priority}; strategy "
        "timestamp_wins | source_priority | merge | manual",
    ),
    Field(
        "memory.schedules",
        "json",
        [],
        "cron syncs: list of {name, cron, stores, strategy, mode, tenant, namespace_prefix}",
    ),
    Field(
        "pipelines.data_roots",
        "json",
        None,
        "directories pipeline file sources and destinations are confined to; "
        "default DATA_DIR/files (created at start); [] turns file access off",
    ),
    Field(
        "pipelines.sql_connections",
        "json",
        {},
        "pipelines: map of connection name to SQLAlchemy URL (sources and table destinations)",
    ),
    Field(
        "pipelines.http_apis",
        "json",
        {},
        "pipelines: map of API name to {base_url, headers, timeout, rate, burst, max_attempts, "
        "failure_threshold, recovery_time} (the only URLs HTTP sources reach)",
    ),
    Field(
        "pipelines.batch_size", "int", 10_000, "rows per batch when a spec gives none", minimum=1
    ),
    Field(
        "pipelines.run_timeout",
        "float",
        3600.0,
        "seconds a run may take unless its spec says",
        minimum=0.01,
    ),
    Field("pipelines.max_retries", "int", 2, "retries of a run after a transient error"),
    Field("pipelines.retry_base_delay", "float", 0.5, "first backoff between run attempts (s)"),
    Field(
        "pipelines.max_concurrent_runs", "int", 4, "runs executing at once per process", minimum=1
    ),
    Field("pipelines.rejects_kept", "int", 1000, "rejected rows stored per run (all are counted)"),
    Field(
        "pipelines.max_lookup_rows",
        "int",
        1_000_000,
        "most rows a lookup source may hold",
        minimum=1,
    ),
    Field(
        "pipelines.schedule_tick",
        "float",
        1.0,
        "seconds between looks for due schedules",
        minimum=0.01,
    ),
    Field(
        "pipelines.progress_interval",
        "float",
        1.0,
        "seconds between run progress updates",
        minimum=0.01,
    ),
    Field(
        "pipelines.memory_limit",
        "str",
        "512MB",
        "memory per run for the columnar engine (DuckDB); sorts, aggregates, dedupe spill past it",
    ),
    Field("pipelines.threads", "int", 0, "engine threads per run (0 = one per core)"),
    Field(
        "pipelines.chunk_rows",
        "int",
        100_000,
        "rows per chunk read from file sources",
        minimum=1000,
    ),
    Field("pipelines.s3_region", "str", "us-east-1", "region of S3 sources and destinations"),
    Field("pipelines.s3_endpoint_url", "str", None, "S3 endpoint (moto, MinIO); default AWS"),
    Field("health.interval", "float", 5.0, "seconds between component checks", minimum=0.05),
    Field(
        "replicas.heartbeat_interval",
        "float",
        2.0,
        "seconds between this process's heartbeats in the database (how others know it lives)",
        minimum=0.05,
    ),
    Field(
        "replicas.stale_after",
        "float",
        8.0,
        "seconds without a heartbeat after which a process counts as dead and its work is "
        "taken over (at least 2 x replicas.heartbeat_interval)",
        minimum=0.1,
    ),
    Field(
        "replicas.check_interval",
        "float",
        2.0,
        "seconds between looks for work left by dead processes (tasks, runs, sync runs)",
        minimum=0.05,
    ),
    Field("health.check_timeout", "float", 2.0, "seconds a component check may take", minimum=0.01),
    Field(
        "health.dependencies",
        "json",
        [],
        "external dependencies: list of {name, target: tcp://host:port | http(s)://url, critical}",
    ),
    Field("tracing.exporter", "str", "none", "where spans go", choices=("none", "console", "otlp")),
    Field(
        "tracing.sample_ratio",
        "float",
        1.0,
        "share of new traces recorded (parent-based: a sampled caller is always followed)",
        maximum=1.0,
    ),
    Field("tracing.otlp_endpoint", "str", "http://127.0.0.1:4317", "OTLP gRPC endpoint"),
    Field("tracing.service_name", "str", "datamcp", "service.name resource attribute"),
    Field(
        "serverless.dead_letter_queue_url",
        "str",
        None,
        "Lambda handlers: SQS queue that records (or events) failing for good are sent to once, "
        "instead of being retried",
    ),
    Field(
        "logging.level",
        "str",
        "INFO",
        "least severe level logged",
        choices=("debug", "info", "warning", "error"),
    ),
    Field("logging.format", "str", "json", "log line format", choices=("json", "text")),
)

BY_KEY: dict[str, Field] = {f.key: f for f in FIELDS}


def markdown_table() -> str:
    """The table of docs/configuration.md (``python -m datamcp.config.fields``)."""
    rows = [
        "| key (TOML) | env var | flag | default | allowed | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for f in FIELDS:
        if f.default is None:
            default = "(none)"
        elif f.kind == "json":
            default = json.dumps(f.default)
        elif f.kind == "bool":
            default = str(f.default).lower()
        else:
            default = str(f.default)
        flag = f"`{f.flag}`" if f.flag else ""
        allowed = f"`{f.allowed}`" if f.allowed else ""
        rows.append(
            f"| `{f.key}` | `{f.env}` | {flag} | `{default}` | {allowed} "
            f"| {f.help.replace('|', '/')} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
