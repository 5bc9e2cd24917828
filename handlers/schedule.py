"""``handlers.schedule.handler``: an EventBridge schedule tick starts due work.

Every service with time-based work registers it on ``App.due`` (pipelines
with a cron schedule, memory syncs); each tick runs them all, or only those
named in the event's ``work`` list (a schedule's input, or the ``detail`` of
a scheduled rule), with the tick's own time as "now", so a retried tick
starts the same slot again, which the services make a no-op. With nothing
registered the answer is simply that nothing was due. A failing service
fails the invocation (after the others ran) so EventBridge retries it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handlers import _runtime
from handlers.events import parse_time

if TYPE_CHECKING:
    from datamcp.bootstrap import App


class DueWorkFailed(RuntimeError):
    """Some due work failed to start; the message lists which and why."""


def handler(event: Any, context: _runtime.LambdaContext | None) -> dict[str, Any]:
    if not isinstance(event, Mapping):
        raise ValueError("a schedule event is a JSON object")
    only = _work(event)
    now = parse_time(event.get("time")) or time.time()

    async def work(app: App, deadline: float) -> dict[str, Any]:
        results = await app.due.run(now, only)
        return {
            "time": now,
            "due": {r.name: r.started for r in results if not r.error},
            "errors": {r.name: r.error for r in results if r.error},
            "unfinished_tasks": await app.agents.queued_tasks.settle(_runtime.remaining(deadline)),
        }

    summary = _runtime.invoke(work, context)
    if summary["errors"]:
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
