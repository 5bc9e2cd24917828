"""The router action that turns events into tasks: ``agent.submit_task``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamcp.core.agents.manager import AgentManager
from datamcp.core.agents.model import TaskSpec
from datamcp.core.events.model import Event
from datamcp.core.events.router import Action

SUBMIT_TASK = "agent.submit_task"


def submit_task_action(agents: AgentManager) -> Action:
    """Params {capability, priority, timeout, input}; the input defaults to the
    event's data. The request id is derived from the trigger event, so a
    redelivered event submits nothing new."""

    async def action(cause: Event, params: Mapping[str, Any]) -> None:
        timeout = params.get("timeout")
        await agents.submit(
            cause.tenant,
            TaskSpec(
                capability=str(params.get("capability", "")),
                input=params.get("input", cause.data),
                priority=int(params.get("priority", 0)),
                timeout=float(timeout) if timeout is not None else None,
                request_id=f"event:{cause.id}",
                correlation_id=cause.correlation_id or cause.id,
            ),
        )

    return action
