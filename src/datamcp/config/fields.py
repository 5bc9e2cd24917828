"""The table of every setting: its dotted key, type, default, bounds, env var and flag.

One table drives the config file, the ``DATAMCP_*`` environment variables, the
command-line flags, the checks of every value (``config.reader``) and the
configuration reference (docs/configuration.md), so none of them can disagree.
Precedence, lowest first: default, config file, environment, flag.
"""

from __future__ import annotations

import json

from datamcp.config.field import JWT, Field
from datamcp.config.service_fields import SERVICE_FIELDS

__all__ = ["BY_KEY", "FIELDS", "Field", "markdown_table"]

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
    Field(
        "auth.jwt.hs256_secret", "str", JWT["hs256_secret"], "shared secret for HS256 bearer tokens"
    ),
    Field(
        "auth.jwt.rs256_public_key_file",
        "file",
        JWT["rs256_public_key_file"],
        "PEM public key for RS256 tokens",
    ),
    Field(
        "auth.jwt.jwks_file", "file", JWT["jwks_file"], "JWKS JSON file for RS256 tokens (by kid)"
    ),
    Field("auth.jwt.issuer", "str", JWT["issuer"], "required iss claim"),
    Field("auth.jwt.audience", "str", JWT["audience"], "required aud claim"),
    Field("auth.jwt.tenant_claim", "str", JWT["tenant_claim"], "claim holding the tenant"),
    Field(
        "auth.jwt.roles_claim",
        "str",
        JWT["roles_claim"],
        "claim holding roles (list or spaced string)",
    ),
    Field("auth.jwt.leeway", "float", JWT["leeway"], "clock skew tolerance in seconds"),
    Field(
        "auth.jwt.default_tenant",
        "str",
        JWT["default_tenant"],
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
    *SERVICE_FIELDS,
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
