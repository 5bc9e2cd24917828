"""``AgentManager``: the one object entry points use for agents and tasks."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence

from datamcp.core import paging
from datamcp.core.agents.agent import Agent, AgentDescriptor
from datamcp.core.agents.manager.agents import AgentHosting
from datamcp.core.agents.manager.calls import AgentCalls
from datamcp.core.agents.manager.directory import AgentDirectory, listing
from datamcp.core.agents.manager.lifecycle import Lifecycle
from datamcp.core.agents.manager.live import LiveTasks
from datamcp.core.agents.manager.parts import TaskCore
from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.agents.manager.pool import TaskPool
from datamcp.core.agents.manager.queries import TaskQueries
from datamcp.core.agents.manager.queued import QueuedTasks
from datamcp.core.agents.manager.recording import TaskRecorder
from datamcp.core.agents.manager.running import TaskRunner
from datamcp.core.agents.manager.submission import Submission, TaskValidator
from datamcp.core.agents.model import AuditRecord, Task, TaskSpec, TaskState
from datamcp.core.agents.registry import AgentRegistry, AgentSlot, Runner
from datamcp.core.agents.schema import SchemaCache
from datamcp.core.events.bus import EventBus
from datamcp.core.instance_model import Instance
from datamcp.core.ports import UnitOfWork, UnitOfWorkFactory
from datamcp.core.resilience import RetryPolicy
from datamcp.core.signals import Signals


class AgentManager:
    """Agents and tasks of one process.

    Args:
        bus: the event bus (its group commit stores task rows and events).
        uow: unit-of-work factory over the store.
        instance: this process, the owner of the tasks it runs.
        policy: limits, retries, recovery.
        strategy: how an agent is picked among those available.
        signals: wake-ups to and from the other processes on this database.
        shared_pool: put tasks no agent here has room for in the pool that
            every process on the database takes from (see ``pool.py``).
    """

    def __init__(
        self,
        bus: EventBus,
        uow: UnitOfWorkFactory,
        instance: Instance,
        *,
        policy: TaskPolicy | None = None,
        strategy: str = "least_loaded",
        clock: Callable[[], float] = time.time,
        signals: Signals | None = None,
        shared_pool: bool = False,
    ) -> None:
        self.policy = p = policy or TaskPolicy()
        self.registry = registry = AgentRegistry(strategy)
        schemas = SchemaCache()
        live = LiveTasks()
        retry = RetryPolicy(p.max_attempts, p.retry_base_delay, p.retry_max_delay)
        recorder = TaskRecorder(bus, instance.id, retry, clock, signals)
        placement = Placement(registry, live, recorder, clock)
        runner = placement.starter = TaskRunner(live, placement, recorder, p, clock, uow=uow)
        queries = TaskQueries(
            uow, live, runner, recorder, clock, me=instance.id, stale_after=p.stale_after
        )
        self.directory = directory = AgentDirectory(
            uow=uow,
            me=instance.id,
            signals=recorder.signals,
            clock=clock,
            stale_after=p.stale_after,
            check_interval=p.orphan_interval,
            enabled=shared_pool,
            schemas=schemas,
        )
        validator = TaskValidator(registry, schemas, p, clock, directory)
        self.pool = pool = TaskPool(
            uow=uow,
            me=instance.id,
            registry=registry,
            placement=placement,
            runner=runner,
            signals=recorder.signals,
            clock=clock,
            check_interval=p.orphan_interval,
            enabled=shared_pool,
        )
        self.core = TaskCore(
            uow=uow,
            instance=instance,
            policy=p,
            clock=clock,
            registry=registry,
            live=live,
            validator=validator,
            recorder=recorder,
            placement=placement,
            runner=runner,
            queries=queries,
            submission=Submission(
                validator=validator,
                live=live,
                placement=placement,
                runner=runner,
                queries=queries,
                recorder=recorder,
                pool=pool,
                policy=p,
                clock=clock,
            ),
            lifecycle=Lifecycle(
                uow=uow,
                instance=instance,
                live=live,
                placement=placement,
                runner=runner,
                recorder=recorder,
                policy=p,
                clock=clock,
            ),
        )
        self._hosting = AgentHosting(registry, schemas, placement)
        self.calls = runner.calls = AgentCalls(self.core)
        #: Queued execution: tasks handed to a queue and run by its handlers.
        self.queued_tasks = QueuedTasks(self.core)

    # --- agents ---------------------------------------------------------------------

    def add_agent(self, agent: Agent, agent_id: str | None = None) -> AgentSlot:
        """Host an in-process agent (built-in, plugin, configured): shared by all tenants."""
        return self._hosting.add_agent(agent, agent_id)

    def attach(self, descriptor: AgentDescriptor, runner: Runner) -> AgentSlot:
        """Host an agent by its descriptor (remote agents come in this way;
        they are listed for the other processes too)."""
        slot = self._hosting.attach(descriptor, runner)
        self.directory.publish(descriptor)
        return slot

    def detach(self, agent_id: str) -> None:
        self._hosting.detach(agent_id)
        self.directory.withdraw(agent_id)

    def agents(self, tenant: str, capability: str = "") -> list[AgentSlot]:
        """The agents ``tenant`` may use: this process's, then those of the
        other processes (remote agents connected there)."""
        here = self._hosting.agents(tenant, capability)
        known = {s.id for s in here}
        there = [
            listing(d)
            for d in self.directory.visible(tenant)
            if d.id not in known
            and (not capability or any(c.name == capability for c in d.capabilities))
        ]
        return here + there

    def agent(self, tenant: str, agent_id: str) -> AgentSlot:
        found = self.directory.find(agent_id, tenant)
        if found is not None and self.registry.slot(agent_id) is None:
            return listing(found)
        return self._hosting.agent(tenant, agent_id)

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.core.lifecycle.start()
        await self.directory.start()
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        await self.directory.stop()
        await self.core.lifecycle.stop(self._hosting.local)

    async def adopt_orphans(self) -> int:
        return await self.core.lifecycle.adopt_orphans()

    async def prune_instances(self) -> int:
        return await self.core.lifecycle.prune_instances()

    # --- tasks ----------------------------------------------------------------------

    async def submit(
        self,
        tenant: str,
        spec: TaskSpec,
        *,
        wait_limit: float | None = None,
        parent: Task | None = None,
        chain: tuple[str, ...] = (),
        depth: int = 0,
        wait_stored: bool = True,
    ) -> tuple[Task, bool]:
        """Check, store and place a task. Returns (task, duplicate); see
        :meth:`Submission.submit`."""
        return await self.core.submission.submit(
            tenant,
            spec,
            wait_limit=wait_limit,
            parent=parent,
            chain=chain,
            depth=depth,
            wait_stored=wait_stored,
        )

    async def execute(
        self, tenant: str, spec: TaskSpec, *, wait_limit: float | None = None
    ) -> Task:
        """Submit and wait for the final state (within ``wait_limit``).

        Raises:
            Unavailable: the task could not be stored.
        """
        task, duplicate = await self.submit(tenant, spec, wait_limit=wait_limit, wait_stored=False)
        live = None if duplicate else self.core.live.get(task.id)
        final = await self.wait(tenant, task.id, wait_limit)
        if live is not None and live.stored is not None:
            await live.stored  # its failure is the caller's answer
        return final

    async def get(self, tenant: str, task_id: str) -> Task:
        return await self.core.queries.get(tenant, task_id)

    async def list_tasks(
        self,
        tenant: str,
        *,
        states: Sequence[TaskState] = (),
        capability: str = "",
        correlation_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        fits: paging.Fits | None = None,
    ) -> tuple[list[Task], str]:
        return await self.core.queries.list_tasks(
            tenant,
            states=states,
            capability=capability,
            correlation_id=correlation_id,
            page_size=page_size,
            page_token=page_token,
            fits=fits,
        )

    async def wait(self, tenant: str, task_id: str, within: float | None = None) -> Task:
        return await self.core.queries.wait(tenant, task_id, within)

    async def cancel(self, tenant: str, task_id: str) -> Task:
        return await self.core.queries.cancel(tenant, task_id)

    def watch(self, tenant: str, task_id: str) -> AsyncIterator[Task]:
        return self.core.queries.watch(tenant, task_id)

    def uow(self) -> UnitOfWork:
        return self.core.uow()

    async def record_audit(self, record: AuditRecord) -> None:
        await self.core.recorder.audit(record)

    # --- introspection --------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self.core.placement.queued

    @property
    def running(self) -> int:
        return sum(s.in_flight for s in self.registry.all())

    @property
    def completed(self) -> int:
        return self.core.runner.completed

    @property
    def failed(self) -> int:
        return self.core.runner.failed

    def metrics(self) -> dict[str, float]:
        values = {
            "tasks_live": float(len(self.core.live)),
            "tasks_queued": float(self.queued),
            "tasks_running": float(self.running),
            "tasks_completed": float(self.completed),
            "tasks_claimed_from_pool": float(self.pool.claimed),
            "tasks_failed": float(self.failed),
        }
        for slot in self.registry.all():
            values[f"agent_{slot.id}_requests"] = float(slot.requests)
            values[f"agent_{slot.id}_errors"] = float(slot.errors)
            values[f"agent_{slot.id}_load"] = float(slot.in_flight)
        return values
