"""Running tasks: one attempt at a time on an agent, under the task's
deadline, with retries, cancellation and the final state.

Every attempt runs the agent's ``run`` in an asyncio task of its own, from
its first line: ``asyncio.timeout``, ``current_task``, contextvars and
cancellation behave inside an agent exactly as asyncio documents. The
runner does not wait on the agent itself but on the first of: the agent
finishing, the deadline, a cancel request. At the deadline or a cancel the
agent's task is cancelled and gets ``policy.cancel_grace`` seconds to stop;
the task becomes final then whatever the agent does (one that ignores
cancellation is left behind, logged, no longer counted on its agent).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

from datamcp.core.agents.agent import AgentError, TaskRefused
from datamcp.core.agents.manager.live import CANCEL, DEADLINE, DONE, AgentRun, LiveTask, LiveTasks
from datamcp.core.agents.manager.placement import Placement
from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.agents.manager.recording import TaskRecorder
from datamcp.core.agents.model import Task, TaskError, TaskState
from datamcp.core.agents.registry import AgentSlot
from datamcp.core.errors import (
    DataMCPError,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
    clip,
    error_id,
)
from datamcp.core.ports import UnitOfWorkFactory
from datamcp.core.resilience import RetryPolicy

log = logging.getLogger(__name__)

_Outcome = tuple[TaskState, Any, TaskError | None]
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
#: Longest error message kept from an agent.
MAX_ERROR_MESSAGE = 2000
#: Task errors that are not the running agent's fault: they never count
#: against its health (the callee's, a disconnect, the caller's own input).
_NOT_AGENT_FAULTS = ("AGENT_DISCONNECTED", "CALL_")


class Caller(Protocol):
    """Agent-to-agent calls as a running task makes them (``calls.AgentCalls``,
    which builds on this runner: named here by what it does, not imported)."""

    async def call(
        self,
        parent: Task | None,
        source_agent_id: str,
        target: str,
        payload: Any,
        *,
        limit: float | None,
    ) -> tuple[Task, str]: ...


class _Context:
    """The :class:`TaskContext` an agent gets for one attempt."""

    def __init__(self, runner: TaskRunner, live: LiveTask, agent_id: str) -> None:
        self._runner = runner
        self._live = live
        self.agent_id = agent_id

    @property
    def task_id(self) -> str:
        return self._live.task.id

    @property
    def tenant(self) -> str:
        return self._live.task.tenant

    @property
    def correlation_id(self) -> str:
        return self._live.task.correlation_id

    @property
    def attempt(self) -> int:
        return self._live.task.attempts

    @property
    def deadline(self) -> float:
        return self._live.task.deadline

    def remaining(self) -> float:
        return max(0.0, self._live.task.deadline - time.time())

    async def progress(self, percent: float, message: str = "") -> None:
        self._runner.recorder.progress(self._live, percent, message)

    async def call(self, target: str, payload: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        calls = self._runner.calls
        assert calls is not None, "agent calls are not wired"
        task, _ = await calls.call(self._live.task, self.agent_id, target, payload, limit=timeout)
        return task.result


class TaskRunner:
    """Runs placed tasks and writes their outcome (the placement's starter)."""

    def __init__(
        self,
        live: LiveTasks,
        placement: Placement,
        recorder: TaskRecorder,
        policy: TaskPolicy,
        clock: Callable[[], float],
        *,
        uow: UnitOfWorkFactory,
    ) -> None:
        self._uow = uow
        self._live = live
        self._placement = placement
        self.recorder = recorder
        self._policy = policy
        self._clock = clock
        self._retry = RetryPolicy(
            policy.max_attempts, policy.retry_base_delay, policy.retry_max_delay
        )
        #: Agent-to-agent calls, for the context (wired by the manager).
        self.calls: Caller | None = None
        self.stopping = False
        self.completed = 0
        self.failed = 0
        #: Agent runs that ignored cancellation, kept referenced until they end.
        self._abandoned: set[asyncio.Future[Any]] = set()
        # A cancel recorded by another process reaches the task here.
        recorder.signals.subscribe("cancel", self._cancel_signalled)

    # --- starting -------------------------------------------------------------------

    def start(self, live: LiveTask, slot: AgentSlot) -> None:
        """Mark a task RUNNING on ``slot``, record it and run it."""
        self._placement.claim(live, slot, self._clock())
        self.recorder.record(live, "task.started")
        self.launch(live, slot)

    def launch(self, live: LiveTask, slot: AgentSlot) -> None:
        """Run a task marked RUNNING on ``slot`` (its in-flight count taken)."""
        slot.requests += 1
        live.runner = asyncio.create_task(self._run(live, slot), name=f"task:{live.task.id}")

    def run_started(self, task: Task, slot: AgentSlot) -> None:
        """Run a task stored RUNNING on ``slot`` by the commit that made it ours
        (queued execution; the slot's in-flight count is taken)."""
        self.launch(self._live.add(task), slot)

    def recover(self, task: Task) -> None:
        """Take on an unfinished task this process now owns (adopted from a
        process that is gone, or handed back): re-run it per
        ``agents.recovery``, or end it."""
        live = self._live.add(task)
        if task.cancel_requested:
            self.finish_soon(live, TaskState.CANCELLED, error=cancelled_error())
        elif task.deadline <= self._clock():
            self.finish_soon(live, TaskState.TIMED_OUT, error=timeout_error(task))
        elif task.state is TaskState.RUNNING and (
            self._policy.recovery == "fail" or task.attempts >= task.max_attempts
        ):
            error = TaskError("PROCESS_DIED", "the process running the task died", True)
            self.finish_soon(live, TaskState.FAILED, error=error)
        else:
            self._placement.place(live)

    def expire(self, live: LiveTask) -> None:
        self.finish_soon(live, TaskState.TIMED_OUT, error=timeout_error(live.task))

    # --- running --------------------------------------------------------------------

    async def _run(self, live: LiveTask, slot: AgentSlot) -> None:
        started = time.perf_counter()
        try:
            (state, result, error), result_json = await self._attempt(live, slot)
        finally:  # interrupted (shutdown, hand-back): the slot takes no new work
            live.runner = None
            slot.latency.record((time.perf_counter() - started) * 1000)
            self._placement.release(slot, drain=False)
        if not self.stopping:
            self._placement.drain(slot)
        if live.cancel_requested:
            state, result, error = TaskState.CANCELLED, None, cancelled_error()
        tenant = live.task.tenant
        if state is TaskState.SUCCEEDED:
            slot.record_success(tenant)
        elif error is not None and _agent_fault(state, error):
            slot.record_fault(tenant)
        if state is TaskState.FAILED and error is not None and self._should_retry(live, error):
            self._retry_later(live, error)
            return
        await self.finish(live, state, result=result, error=error, result_json=result_json)

    async def _attempt(self, live: LiveTask, slot: AgentSlot) -> tuple[_Outcome, str | None]:
        """Run the agent once under the task deadline: (outcome, result as JSON)."""
        task = live.task
        if live.cancel_requested or task.state.final:
            return (TaskState.CANCELLED, None, cancelled_error()), None
        remaining = task.deadline - self._clock()
        if remaining <= 0:
            return (TaskState.TIMED_OUT, None, timeout_error(task)), None
        loop = asyncio.get_running_loop()
        agent_task = asyncio.ensure_future(
            slot.runner.run(_Context(self, live, slot.id), task.capability, task.input)
        )
        run = live.run = AgentRun(agent_task, loop.create_future())
        agent_task.add_done_callback(lambda _: run.settle(DONE))
        timer = loop.call_later(remaining, run.settle, DEADLINE)
        try:
            why = await run.ended
        except asyncio.CancelledError:  # shutdown: the manager hands the task back
            await self._stop_agent(live, agent_task)
            raise
        finally:
            timer.cancel()
            live.run = None
        if why == DONE:
            return self._outcome(agent_task, live)
        await self._stop_agent(live, agent_task)
        if why == DEADLINE:
            return (TaskState.TIMED_OUT, None, timeout_error(task)), None
        assert why == CANCEL
        return (TaskState.CANCELLED, None, cancelled_error()), None

    async def _stop_agent(self, live: LiveTask, agent_task: asyncio.Future[Any]) -> None:
        """Cancel an agent's run and give it ``cancel_grace`` seconds to end."""
        if not agent_task.done():
            agent_task.cancel()
            await asyncio.wait({agent_task}, timeout=self._policy.cancel_grace)
        if agent_task.done():
            if not agent_task.cancelled():
                agent_task.exception()  # retrieved: what it ended with no longer matters
            return
        log.warning(
            "agent did not stop when its task was cancelled; left running",
            extra={"task_id": live.task.id, "agent_id": live.task.agent_id},
        )
        self._abandoned.add(agent_task)
        agent_task.add_done_callback(self._forget_abandoned)

    def _forget_abandoned(self, agent_task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(agent_task)
        if not agent_task.cancelled():
            agent_task.exception()

    def _outcome(
        self, agent_task: asyncio.Future[Any], live: LiveTask
    ) -> tuple[_Outcome, str | None]:
        if agent_task.cancelled():  # the agent cancelled itself
            return (TaskState.CANCELLED, None, cancelled_error()), None
        if (failure := agent_task.exception()) is not None:
            return (TaskState.FAILED, None, self._task_error(failure, live)), None
        return result_outcome(agent_task.result())

    def _task_error(self, exc: BaseException, live: LiveTask) -> TaskError:
        if isinstance(exc, AgentError):
            return TaskError(
                agent_reason(exc.reason),
                clip(str(exc), MAX_ERROR_MESSAGE),
                exc.retryable,
                caller_fault=isinstance(exc, TaskRefused),
            )
        if isinstance(exc, DataMCPError):  # from a service the agent called for the caller
            outage = isinstance(exc, Unavailable | DeadlineExceeded | ResourceExhausted)
            retryable = isinstance(exc, Unavailable)
            return TaskError(exc.reason, exc.message, retryable, caller_fault=not outage)
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return TaskError("AGENT_UNAVAILABLE", clip(f"agent unavailable: {exc}"), True)
        log.warning(
            "agent raised",
            extra={
                "task_id": live.task.id,
                "agent_id": live.task.agent_id,
                "error_id": error_id(exc),
            },
            exc_info=exc,
        )
        return TaskError("AGENT_ERROR", f"the agent failed unexpectedly (error id {error_id(exc)})")

    # --- retries --------------------------------------------------------------------

    def _should_retry(self, live: LiveTask, error: TaskError) -> bool:
        if self.stopping or not error.retryable:
            return False
        if error.reason == "AGENT_DISCONNECTED":
            return self._policy.remote_disconnect == "requeue"
        return live.task.attempts < live.task.max_attempts

    def _retry_later(self, live: LiveTask, error: TaskError) -> None:
        delay = (
            0.0 if error.reason == "AGENT_DISCONNECTED" else self._retry.delay(live.task.attempts)
        )
        if self._clock() + delay >= live.task.deadline:
            self.finish_soon(live, TaskState.TIMED_OUT, error=timeout_error(live.task))
            return
        live.task = live.task.evolve(state=TaskState.QUEUED, error=error, updated_at=self._clock())
        self.recorder.record(live, "task.retrying")
        self._placement.delayed += 1
        asyncio.get_running_loop().call_later(delay, self._requeue, live)

    def _requeue(self, live: LiveTask) -> None:
        self._placement.delayed -= 1
        if self._live.get(live.task.id) is live and live.task.state is TaskState.QUEUED:
            self._placement.place(live)

    # --- ending ---------------------------------------------------------------------

    def interrupt(self, live: LiveTask) -> bool:
        """Ask a running attempt to stop for a cancel; False when none runs."""
        live.cancel_requested = True
        if live.run is None:
            return False
        live.run.settle(CANCEL)
        return True

    def cancel_soon(self, live: LiveTask) -> None:
        """End a task for a cancel recorded elsewhere: its run is stopped, or
        (queued, backing off) it ends at once."""
        if not live.task.state.final and not self.interrupt(live):
            self.finish_soon(live, TaskState.CANCELLED, error=cancelled_error())

    def _cancel_signalled(self, task_id: str) -> None:
        live = self._live.get(task_id) if task_id else None
        if live is not None:
            self.cancel_soon(live)

    def finish_soon(
        self,
        live: LiveTask,
        state: TaskState,
        *,
        result: Any = None,
        error: TaskError | None = None,
    ) -> None:
        live.runner = asyncio.create_task(self.finish(live, state, result=result, error=error))

    async def finish(
        self,
        live: LiveTask,
        state: TaskState,
        *,
        result: Any = None,
        error: TaskError | None = None,
        result_json: str | None = None,
    ) -> None:
        """Make the task final, store it with its event, then tell everyone."""
        if live.task.state.final:
            return
        self._placement.unqueue(live)
        now = self._clock()
        live.task = live.task.evolve(
            state=state,
            result=result,
            result_json=result_json if result is not None else None,
            error=error,
            ended_at=now,
            updated_at=now,
        )
        live.final_pending = True
        try:
            if not await self.recorder.store_final(live.task):
                # Ended elsewhere first (a cancel, an adopter): that is the truth.
                stored = await self._stored(live.task)
                if stored is not None:
                    live.task = stored
        except Exception:
            log.exception("task final state not stored", extra={"task_id": live.task.id})
        finally:
            if state is TaskState.SUCCEEDED:
                self.completed += 1
            else:
                self.failed += 1
            self._live.forget(live)
            live.runner = None
            live.final_pending = False
            live.done.set()
            live.notify()

    async def _stored(self, task: Task) -> Task | None:
        async with self._uow() as tx:
            return await tx.tasks.get(task.tenant, task.id)


def _agent_fault(state: TaskState, error: TaskError) -> bool:
    """Whether a failed attempt counts against its agent's health."""
    if state not in (TaskState.FAILED, TaskState.TIMED_OUT) or error.caller_fault:
        return False
    return not error.reason.startswith(_NOT_AGENT_FAULTS)


def result_outcome(value: Any) -> tuple[_Outcome, str | None]:
    """The outcome of a returned value, and the value as JSON."""
    try:
        encoded = json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        error = TaskError("BAD_RESULT", f"the agent's result is not JSON: {exc}")
        return (TaskState.FAILED, None, error), None
    return (TaskState.SUCCEEDED, value, None), encoded


def agent_reason(reason: str) -> str:
    """An agent's failure reason as stored: an UPPER_SNAKE code of at most
    64 characters (anything else an agent sends becomes AGENT_ERROR)."""
    return reason if _REASON.fullmatch(reason) else "AGENT_ERROR"


def timeout_error(task: Task) -> TaskError:
    return TaskError("TIMEOUT", f"task did not finish within {task.timeout:.3f}s", False)


def cancelled_error() -> TaskError:
    return TaskError("CANCELLED", "cancelled")
