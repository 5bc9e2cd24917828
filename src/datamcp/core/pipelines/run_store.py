"""A run's changes as writes through the event bus writer (each commits in
the same transaction as the event announcing it: a transactional outbox),
and the runs left unfinished by processes that are gone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datamcp.core.instances import is_gone
from datamcp.core.pipelines.model import Reject, Run
from datamcp.core.ports import UnitOfWork, UnitOfWorkFactory, WriteOp


async def _apply_insert(tx: UnitOfWork, runs: Sequence[Run]) -> None:
    await tx.pipelines.insert_runs(runs)


async def _apply_save(tx: UnitOfWork, runs: Sequence[Run]) -> None:
    await tx.pipelines.save_runs(runs)


async def _apply_rejects(tx: UnitOfWork, items: Sequence[tuple[Run, list[Reject]]]) -> None:
    for run, rejects in items:
        await tx.pipelines.add_rejects(run.id, run.tenant, rejects)


async def _apply_cursor(tx: UnitOfWork, items: Sequence[tuple[str, Any]]) -> None:
    for pipeline_id, cursor in items:
        await tx.pipelines.set_cursor(pipeline_id, cursor)


INSERT = WriteOp("pipeline_run.insert", 0, _apply_insert)
SAVE = WriteOp("pipeline_run.save", 1, _apply_save)
REJECTS = WriteOp("pipeline_run.rejects", 2, _apply_rejects)
CURSOR = WriteOp("pipeline.cursor", 3, _apply_cursor)


async def orphaned_runs(
    uow: UnitOfWorkFactory, instance_id: str, now: float, stale_after: float
) -> list[Run]:
    """The unfinished runs of processes that are gone (a SIGKILL, a crash),
    not this one's."""
    async with uow() as tx:
        dead = []
        for owner in await tx.pipelines.unfinished_owners():
            if owner == instance_id:
                continue
            inst = await tx.instances.get(owner)
            if inst is None or is_gone(inst, now, stale_after):
                dead.append(owner)
        return await tx.pipelines.runs_of_owners(dead) if dead else []
