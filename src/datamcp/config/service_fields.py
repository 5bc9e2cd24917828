"""The settings of the services: agents, streams, memory, pipelines (part of ``FIELDS``)."""

from __future__ import annotations

from datamcp.config.field import RUN, STREAM, TASK, Field

SERVICE_FIELDS: tuple[Field, ...] = (
    Field(
        "agents.strategy",
        "str",
        "least_loaded",
        "how a task picks among the agents that can run it",
        choices=("least_loaded", "round_robin", "weighted"),
    ),
    Field(
        "agents.queue_size",
        "int",
        TASK["queue_size"],
        "most tasks waiting for a free agent",
        minimum=1,
    ),
    Field(
        "agents.default_timeout",
        "float",
        TASK["default_timeout"],
        "seconds a task may run when none is given",
        minimum=0.001,
    ),
    Field("agents.min_timeout", "float", TASK["min_timeout"], "shortest task timeout accepted"),
    Field(
        "agents.max_timeout",
        "float",
        TASK["max_timeout"],
        "longest task timeout accepted",
        minimum=0.001,
    ),
    Field(
        "agents.max_attempts",
        "int",
        TASK["max_attempts"],
        "default attempts for retryable task errors",
        minimum=1,
    ),
    Field(
        "agents.retry_base_delay",
        "float",
        TASK["retry_base_delay"],
        "first retry backoff bound, seconds",
    ),
    Field(
        "agents.retry_max_delay", "float", TASK["retry_max_delay"], "largest retry backoff, seconds"
    ),
    Field(
        "agents.max_input_bytes",
        "int",
        TASK["max_input_bytes"],
        "largest task input (JSON bytes)",
        minimum=1,
    ),
    Field(
        "agents.max_call_depth",
        "int",
        TASK["max_call_depth"],
        "longest agent-to-agent call chain",
        minimum=1,
    ),
    Field(
        "agents.recovery",
        "str",
        TASK["recovery"],
        "tasks a dead process left running: retry (re-run) | fail",
        choices=("retry", "fail"),
    ),
    Field(
        "agents.remote_disconnect",
        "str",
        TASK["remote_disconnect"],
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
        STREAM["lease"],
        "seconds a process holds a stream job without checkpointing; a dead process's jobs "
        "resume elsewhere after it",
        minimum=0.5,
    ),
    Field(
        "streams.poll_interval",
        "float",
        STREAM["poll_interval"],
        "seconds an idle stream job waits between looks",
        minimum=0.01,
    ),
    Field(
        "streams.batch",
        "int",
        STREAM["batch"],
        "most input events a stream job applies per checkpoint",
        minimum=1,
    ),
    Field(
        "streams.max_jobs_per_tenant",
        "int",
        STREAM["max_jobs_per_tenant"],
        "most stream jobs one tenant may have",
        minimum=1,
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
        RUN["run_timeout"],
        "seconds a run may take unless its spec says",
        minimum=0.01,
    ),
    Field(
        "pipelines.max_retries",
        "int",
        RUN["max_retries"],
        "retries of a run after a transient error",
    ),
    Field(
        "pipelines.retry_base_delay",
        "float",
        RUN["retry_base_delay"],
        "first backoff between run attempts (s)",
    ),
    Field(
        "pipelines.max_concurrent_runs",
        "int",
        RUN["max_concurrent_runs"],
        "runs executing at once per process",
        minimum=1,
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
)
