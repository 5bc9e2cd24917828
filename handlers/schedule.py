"""``handlers.schedule.handler``: an EventBridge schedule tick starts due work.

Every service with time-based work registers it on ``App.due``: cron memory
syncs (``memory.sync``) and pipeline cron schedules (``pipelines``), what the
servers' own schedulers fire. Each tick runs them all, or only those named in
the event's ``work`` list (a schedule's input, or the ``detail`` of a
scheduled rule). Every slot is claimed in the database before it starts, so a
retried or overlapping tick (another container, or the servers) starts
nothing twice. Memory syncs take the tick's own time as "now"; pipelines
fire the slots their stored next fire time says are due.

The work a tick started is waited for within the invocation (a container is
frozen once it answers); what is still running then is stopped (a pipeline
run ends FAILED ``SERVER_STOPPED``, a sync INTERRUPTED and resumes from its
checkpoints) and counted in ``stopped``. A failing service fails the
invocation (after the others ran) so it is retried; a tick that can never
work (malformed, naming unknown work) goes once to the dead-letter queue.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.errors import InvalidArgument
from handlers import _failures, _runtime, _telemetry
from handlers.events import parse_time

if TYPE_CHECKING:
    from datamcp.bootstrap import App


class DueWorkFailed(RuntimeError):
    """Some due work failed to start; the message lists which and why."""


@_telemetry.observed("schedule", _runtime.local_context)
def handler(event: Any, context: _runtime.LambdaContext | None) -> dict[str, Any]:
    try:
        if not isinstance(event, Mapping):
            raise ValueError("a schedule event is a JSON object")
        only = _work(event)
        now = parse_time(event.get("time")) or time.time()
    except ValueError as exc:
        return _failures.refuse(event, exc, context)

    async def work(app: App, deadline: float) -> dict[str, Any]:
        try:
            results = await app.due.run(now, only)
        except InvalidArgument as exc:  # unknown due work: no retry will know it
            return await _failures.give_up(app, event, exc, context)
        failed = sum(1 for r in results if r.error)
        _telemetry.count(processed=len(results) - failed, failed=failed)
        return {
            "time": now,
            "due": {r.name: r.started for r in results if not r.error},
            "errors": {r.name: r.error for r in results if r.error},
            "stopped": await app.due.settle(_runtime.remaining(deadline)),
            "unfinished_tasks": await app.agents.queued_tasks.settle(_runtime.remaining(deadline)),
        }

    summary = _runtime.invoke(work, context)
    if summary.get("errors"):
        raise DueWorkFailed(f"due work failed: {summary['errors']}")
    return summary


def _work(event: Mapping[str, Any]) -> list[str]:
    detail = event.get("detail")
    names = event.get("work")
    if names is None and isinstance(detail, Mapping):
        names = detail.get("work")
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("work must be a list of due-work names")
    return list(names)
