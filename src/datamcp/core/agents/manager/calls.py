"""Agent-to-agent calls: a child task per call, the caller's correlation id
and remaining deadline carried along, depth and cycle limits, and an audit
record of every call (also for calls made through ``SendAgentRequest``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import replace
from typing import Any

from datamcp.core import paging
from datamcp.core.agents.agent import AgentError
from datamcp.core.agents.manager.parts import TaskCore
from datamcp.core.agents.model import (
    MAX_ID,
    MAX_NAME,
    AuditRecord,
    Task,
    TaskSpec,
    TaskState,
    text_problem,
)
from datamcp.core.errors import (
    DataMCPError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    clip,
)


class AgentCalls:
    def __init__(self, core: TaskCore) -> None:
        self._core = core

    async def call(
        self,
        parent: Task | None,
        source_agent_id: str,
        target: str,
        payload: Any,
        *,
        limit: float | None,
        tenant: str = "",
        correlation_id: str = "",
    ) -> tuple[Task, str]:
        tenant = parent.tenant if parent else tenant
        depth = (parent.depth if parent else 0) + 1
        chain = (*(parent.chain if parent else ()), source_agent_id)
        started = time.time()
        audit_id = str(uuid.uuid4())
        correlation = (parent.correlation_id if parent else "") or correlation_id
        by_agent = self._core.registry.get(target, tenant) is not None
        spec = TaskSpec(
            capability="" if by_agent else target,
            agent_id=target if by_agent else "",
            input=payload,
            correlation_id=correlation,
            max_attempts=1,
        )
        bounds = [b for b in (limit, parent.deadline - started if parent else None) if b]
        spec = replace(spec, timeout=min(bounds) if bounds else None)

        async def audit(task_id: str, target_agent: str, outcome: str, error: str) -> None:
            record = AuditRecord(
                id=audit_id,
                tenant=tenant,
                source_agent_id=source_agent_id,
                target=target,
                target_agent_id=target_agent,
                correlation_id=correlation or task_id,
                task_id=task_id,
                parent_task_id=parent.id if parent else "",
                depth=depth,
                outcome=outcome,
                error=error,
                started_at=started,
                duration=time.time() - started,
            )
            await self._core.recorder.audit(record)

        refusal = self._refuse(target, tenant, by_agent, depth, chain)
        if refusal is not None:
            await audit("", "", "rejected", f"{refusal.reason}: {refusal}")
            raise refusal
        try:
            child, _ = await self._core.submission.submit(
                tenant, spec, parent=parent, chain=chain, depth=depth
            )
        except DataMCPError as exc:
            await audit("", "", "rejected", f"{exc.reason}: {exc.message}")
            raise AgentError(exc.message, reason="CALL_REJECTED") from exc
        try:
            final = await self._core.queries.wait(tenant, child.id)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._core.queries.cancel(tenant, child.id))
            await asyncio.shield(audit(child.id, child.agent_id, "cancelled", "caller cancelled"))
            raise
        outcome = final.state.name.lower()
        error = f"{final.error.reason}: {final.error.message}" if final.error else ""
        await audit(final.id, final.agent_id, outcome, error)
        if final.state is not TaskState.SUCCEEDED:
            retryable = final.error.retryable if final.error else False
            raise AgentError(
                f"call to {target} ended {final.state.name}: {error}",
                reason=f"CALL_{final.state.name}",
                retryable=retryable,
            )
        return final, audit_id

    def _refuse(
        self, target: str, tenant: str, by_agent: bool, depth: int, chain: tuple[str, ...]
    ) -> AgentError | None:
        limit = self._core.policy.max_call_depth
        if depth > limit:
            return AgentError(f"call chain deeper than {limit}", reason="CALL_DEPTH")
        candidates = self._core.registry.candidates(target, tenant, by_agent=by_agent)
        if not candidates:
            return AgentError(f"no agent offers {clip(target)!r}", reason="NO_AGENT")
        if all(c.id in chain for c in candidates):
            return AgentError(
                f"call to {target} would loop back into {' -> '.join(chain)}", reason="CALL_CYCLE"
            )
        return None

    async def send_agent_request(
        self,
        tenant: str,
        source_agent_id: str,
        target: str,
        payload: Any,
        *,
        limit: float | None = None,
        correlation_id: str = "",
    ) -> tuple[Task, str]:
        """An agent-to-agent call made through the API on behalf of ``source_agent_id``.

        Raises:
            InvalidArgument: the source agent is unknown.
            FailedPrecondition: the call was refused or did not succeed (the
                audit record says why).
        """
        bad = [
            FieldViolation(name, problem)
            for name, value, limit in (
                ("source_agent_id", source_agent_id, MAX_NAME),
                ("target", target, MAX_NAME),
                ("correlation_id", correlation_id, MAX_ID),
            )
            if (problem := text_problem(value, limit)) is not None
        ]
        if bad:
            raise InvalidArgument("invalid agent request; nothing was sent", bad)
        if self._core.registry.get(source_agent_id, tenant) is None:
            raise InvalidArgument(
                f"no agent {clip(source_agent_id)!r}",
                [FieldViolation("source_agent_id", "must name a registered agent")],
            )
        try:
            return await self.call(
                None,
                source_agent_id,
                target,
                payload,
                limit=limit,
                tenant=tenant,
                correlation_id=correlation_id,
            )
        except AgentError as exc:
            if isinstance(exc.__cause__, DataMCPError):
                raise exc.__cause__ from None
            raise FailedPrecondition(str(exc), reason=exc.reason) from None

    async def audit_records(
        self,
        tenant: str,
        *,
        correlation_id: str = "",
        agent_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        fits: paging.Fits | None = None,
    ) -> tuple[list[AuditRecord], str]:
        """One page of agent-to-agent call records, newest first (``fits``:
        see :func:`paging.fill`)."""
        size = paging.page_size(page_size)
        before = paging.keyset(page_token)
        async with self._core.uow() as tx:
            records = await tx.audit.page(
                tenant,
                correlation_id=correlation_id,
                agent_id=agent_id,
                before=before,
                limit=size,
            )
        page, more = paging.fill(records, len(records) == size, fits)
        last = page[-1] if more and page else None
        return page, paging.encode([last.started_at, last.id]) if last else ""
