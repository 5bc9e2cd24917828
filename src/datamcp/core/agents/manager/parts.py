"""``TaskCore``: the manager's parts, in one object for what builds on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datamcp.core.agents.manager.lifecycle import Lifecycle
from datamcp.core.agents.manager.live import LiveTasks
from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.agents.manager.queries import TaskQueries
from datamcp.core.agents.manager.recording import TaskRecorder
from datamcp.core.agents.manager.running import TaskRunner
from datamcp.core.agents.manager.submission import Submission, TaskValidator
from datamcp.core.agents.registry import AgentRegistry
from datamcp.core.instance_model import Instance
from datamcp.core.ports import UnitOfWorkFactory


@dataclass(frozen=True, slots=True)
class TaskCore:
    """The manager's parts, for what builds on it (queued execution, agent
    calls) through their public methods."""

    uow: UnitOfWorkFactory
    instance: Instance
    policy: TaskPolicy
    clock: Callable[[], float]
    registry: AgentRegistry
    live: LiveTasks
    validator: TaskValidator
    recorder: TaskRecorder
    placement: Placement
    runner: TaskRunner
    queries: TaskQueries
    submission: Submission
    lifecycle: Lifecycle
