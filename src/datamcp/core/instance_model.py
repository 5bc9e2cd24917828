"""What a server instance is, as stored and as the others see it.

The records apart from the operations (``instances``), which go through the
unit of work: the repository port (``ports``) names these without a cycle.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    host: str
    pid: int
    version: str
    started_at: float
    heartbeat_at: float
    stopped_at: float | None = None

    @classmethod
    def for_this_process(cls, version: str) -> Instance:
        now = time.time()
        host = socket.gethostname()
        # Lambda sandboxes can share a hostname and pid; the log stream names
        # the sandbox, and keeps is_gone from probing another sandbox's pid here.
        stream = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        if stream:
            host = f"lambda:{stream}"[:255]
        return cls(uuid.uuid4().hex, host, os.getpid(), version, now, now)


@dataclass(frozen=True, slots=True)
class ListedAgent:
    """An agent an instance hosts, as the others see it (its descriptor as JSON)."""

    agent_id: str
    instance_id: str
    descriptor: str
