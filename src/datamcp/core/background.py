"""Background waits and stops: wait for an event a bounded time, cancel
tasks and wait until they have finished, say where a slow stop waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` (None entries are skipped) and wait for all of them."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_at_most(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True when it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that
    arrives as the event is set, so a task cancelled at that moment went on
    running (a stream job held shutdown forever; a stream outlived it).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def finish_watched(
    work: Awaitable[None], every: float, report: Callable[[list[str]], None]
) -> None:
    """Await ``work``; each ``every`` seconds it is still running, hand
    ``report`` where every other task of the loop is waiting (a shutdown that
    hangs says where)."""
    future = asyncio.ensure_future(work)
    try:
        while not future.done():
            await asyncio.wait({future}, timeout=every)
            if not future.done():
                report(waiting_tasks())
    except asyncio.CancelledError:
        future.cancel()
        raise
    await future


def waiting_tasks() -> list[str]:
    """'name: file:line in function' for every task of the loop but this one."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        stack = task.get_stack(limit=None)
        where = stack[-1] if stack else None
        found.append(
            f"{task.get_name()}: "
            + (
                f"{where.f_code.co_filename}:{where.f_lineno} in {where.f_code.co_name}"
                if where
                else "?"
            )
        )
    return sorted(found)
