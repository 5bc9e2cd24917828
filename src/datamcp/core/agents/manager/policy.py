"""How the agent manager treats tasks: limits, retries, recovery, timing."""

from __future__ import annotations

from dataclasses import dataclass

from datamcp.core.instances import RETENTION

MIN_PRIORITY, MAX_PRIORITY = -100, 100
#: Progress is published at most this often per task (the last one always is).
PROGRESS_INTERVAL = 0.2
#: A task's final state is stored before anyone hears of it; a store outage
#: gets this many tries.
FINAL_WRITE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class TaskPolicy:
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
    orphan_interval: float = 2.0
    stale_after: float = 8.0
    #: Rows of instances silent or stopped this long are deleted by the sweep.
    instance_retention: float = RETENTION
    #: Seconds an agent gets to stop after its task was cancelled or ran out
    #: of time. The task is final at its deadline plus at most this, whatever
    #: the agent does (an agent that ignores cancellation is left behind).
    cancel_grace: float = 1.0
