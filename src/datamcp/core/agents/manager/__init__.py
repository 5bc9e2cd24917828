"""The agent manager: validates and stores tasks, places them on agents,
runs them with deadlines, retries and cancellation, and records every change.

One facade, :class:`AgentManager`, over one module per concern:

- ``agents``: the agents hosted, and which tenants each serves;
- ``submission``: checking, storing and placing a new task;
- ``placement``: which agent runs a task, and the queues tasks wait in;
- ``running``: an attempt in its own asyncio task, under the deadline;
- ``recording``: task rows and their ``task.*`` events, committed together;
- ``queries``: get, list, wait, watch and cancel, scoped by tenant;
- ``lifecycle``: adopting orphans, handing work back at shutdown;
- ``calls``: agent-to-agent calls, and ``queued``: tasks run through a
  queue; both build on the parts above (``parts.TaskCore``).
"""

from datamcp.core.agents.manager.facade import AgentManager
from datamcp.core.agents.manager.parts import TaskCore
from datamcp.core.agents.manager.policy import TaskPolicy

__all__ = ["AgentManager", "TaskCore", "TaskPolicy"]
