"""acme's fingerprint: everything acme can see, in the fields that only change
when someone changes acme's resources. The matrix takes it before and after
each of globex's probes; any difference is globex affecting acme."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import text

from datamcp.v1 import agents_pb2, events_pb2, memory_pb2, pipelines_pb2, streams_pb2
from tests.tenancy.world import A_TENANT, SHARED_KEY, SHARED_NS, SINK_TABLE, World


async def settle(w: World) -> dict[str, Any]:
    """acme's fingerprint once background work (events published after a
    commit, stream checkpoints) has stopped changing it."""
    previous = await snapshot(w)
    for _ in range(100):
        await asyncio.sleep(0.2)
        current = await snapshot(w)
        if current == previous:
            return current
        previous = current
    raise AssertionError("acme's resources never settled")


async def snapshot(w: World) -> dict[str, Any]:
    out: dict[str, Any] = {"agent": [x.task_id for x in w.a_agent.assignments]}
    out.update(await _agents_and_events(w))
    out.update(await _pipelines_and_streams(w))
    out.update(await _memory(w))
    return out


async def _agents_and_events(w: World) -> dict[str, Any]:
    a = w.a
    tasks = await a.agents.ListTasks(agents_pb2.ListTasksRequest(page_size=1000))
    audits = await a.agents.ListAuditRecords(agents_pb2.ListAuditRecordsRequest(page_size=1000))
    replay = a.events.Replay(events_pb2.ReplayRequest())
    subs = await a.events.ListSubscriptions(events_pb2.ListSubscriptionsRequest(page_size=1000))
    dead = await a.events.ListDeadLetters(
        events_pb2.ListDeadLettersRequest(subscription="acme-dead")
    )
    return {
        "tasks": sorted((t.id, t.state, t.attempts, t.capability) for t in tasks.tasks),
        "audit": sorted((r.id, r.outcome, r.task_id) for r in audits.records),
        "events": [(r.event.sequence, r.event.id, r.event.type) async for r in replay],
        "subscriptions": sorted(
            (s.name, tuple(s.filter.types), s.lag, s.dead_letters, s.max_attempts)
            for s in subs.subscriptions
        ),
        "dead_letters": [(d.event.sequence, d.attempts, d.last_error) for d in dead.dead_letters],
    }


async def _pipelines_and_streams(w: World) -> dict[str, Any]:
    a = w.a
    pipes = await a.pipelines.ListPipelines(pipelines_pb2.ListPipelinesRequest(page_size=1000))
    runs = await a.pipelines.ListRuns(pipelines_pb2.ListRunsRequest(page_size=1000))
    run = await a.pipelines.GetRun(pipelines_pb2.GetRunRequest(id=w.ids["run"], reject_limit=100))
    jobs = await a.pipelines.ListStreamJobs(streams_pb2.ListStreamJobsRequest(page_size=1000))
    return {
        "pipelines": sorted((p.id, p.name, p.version) for p in pipes.pipelines),
        "runs": sorted(
            (r.id, r.state, r.rows_read, r.rows_written, r.rows_rejected) for r in runs.runs
        ),
        "rejects": [(r.row_number, r.reason) for r in run.rejects],
        "output_file": _digest(w.tmp / "files" / A_TENANT / "out.jsonl"),
        "stream_jobs": sorted((j.id, j.name, _counts(j.counters)) for j in jobs.jobs),
        "sink_rows": await _sink_rows(w),
    }


async def _memory(w: World) -> dict[str, Any]:
    a = w.a
    out: dict[str, Any] = {}
    for store in ("main", "b"):
        listed = await a.memory.List(
            memory_pb2.ListRequest(page_size=1000, store=store, include_deleted=True)
        )
        out[f"memory:{store}"] = [
            (r.namespace, r.key, r.version, r.deleted) for r in listed.records
        ]
    history = await a.memory.GetHistory(
        memory_pb2.GetHistoryRequest(namespace=SHARED_NS, key=SHARED_KEY)
    )
    stores = await a.memory.ListStores(memory_pb2.ListStoresRequest())
    syncs = await a.memory.ListSyncRuns(memory_pb2.ListSyncRunsRequest(page_size=1000))
    conflicts = await a.memory.ListConflicts(memory_pb2.ListConflictsRequest(page_size=1000))
    out.update(
        history=[v.version for v in history.versions],
        stores=sorted((s.id, s.records, s.last_sequence) for s in stores.stores),
        sync_runs=sorted((r.sync_id, r.status, r.records_read) for r in syncs.runs),
        conflicts=sorted((c.id, c.status, c.winner) for c in conflicts.conflicts),
    )
    return out


def _counts(c: streams_pb2.StreamJobCounters) -> tuple[int, ...]:
    return (c.records_accepted, c.records_rejected, c.windows_emitted, c.inputs_consumed)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


async def _sink_rows(w: World) -> list[tuple[str, str]]:
    """Rows of acme's stream sink table (read in the database: no RPC reads it)."""
    async with w.server.server.app.engine.connect() as conn:
        rows = await conn.execute(text(f"SELECT tenant, job_id FROM {SINK_TABLE} ORDER BY id"))
        return [(r.tenant, r.job_id) for r in rows]
