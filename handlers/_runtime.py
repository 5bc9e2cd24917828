"""What the handlers of one Lambda container share.

- The application, built once per container on first use with the one
  bootstrap (``App.create``) from ``DATAMCP_*`` environment variables. The
  heavy imports (SQLAlchemy, the agents, the AWS adapters) happen then, not
  when the handler module is imported: a module import is the part of a
  cold start that every container pays, and grpc or protobuf service code
  is never imported at all.
- One event loop, created once and reused by every warm invocation. Async
  pools (the database engine, aiobotocore clients) are bound to the loop
  they were made on, so ``asyncio.run`` per call would break them.
- Only the event bus writer runs in the background: a Lambda container is
  frozen between invocations, so it runs no trigger consumers, broker relays
  or orphan sweeps (the servers do), and before an invocation returns every
  task it started has ended or is handed back (``QueuedTasks.release``).
- The instance heartbeat, written while invocations run, so the tasks of a
  container that crashed are recognised as orphans after
  ``max(60 s, 6 x health.interval)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from datamcp.bootstrap import App

log = logging.getLogger("datamcp.handlers")

T = TypeVar("T")

#: Part of the remaining time kept back to hand unfinished work back and
#: answer: 10%, at least 0.5 s, at most 10 s.
MARGIN_SHARE, MARGIN_MIN, MARGIN_MAX = 0.1, 0.5, 10.0
#: When no context is given (direct calls), the time an invocation may take.
DEFAULT_BUDGET = 60.0


class _Container:
    """This container's state (module-level, so warm invocations share it)."""

    loop: asyncio.AbstractEventLoop | None = None
    app: App | None = None
    heartbeat_at = 0.0


_this = _Container()


class LambdaContext(Protocol):
    """The part of the Lambda context object the handlers use."""

    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


class LocalContext:
    """A context for local runs (``datamcp lambda-local``, tests): the
    function timeout counts down from construction."""

    def __init__(self, timeout: float = 30.0, function_name: str = "datamcp-local") -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self._ends = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._ends - time.monotonic()) * 1000))


def loop() -> asyncio.AbstractEventLoop:
    """The container's event loop (made on first use)."""
    if _this.loop is None or _this.loop.is_closed():
        _this.loop = asyncio.new_event_loop()
    return _this.loop


def budget(context: LambdaContext | None) -> float:
    """Seconds this invocation may spend on work, the margin kept back."""
    if context is None:
        return DEFAULT_BUDGET
    remaining = context.get_remaining_time_in_millis() / 1000.0
    margin = min(MARGIN_MAX, max(MARGIN_MIN, remaining * MARGIN_SHARE))
    return max(0.0, remaining - margin)


async def app() -> App:
    """The container's application, created (and migrated) on first use."""
    if _this.app is None:
        from datamcp.bootstrap import App
        from datamcp.config.settings import load_settings
        from datamcp.observability.logging import configure_logging

        settings = load_settings()
        configure_logging(settings.logging.level, settings.logging.format)
        created = await App.create(settings)
        await created.events.bus.start()
        _this.app = created
    return _this.app


def invoke(work: Callable[[App, float], Awaitable[T]], context: LambdaContext | None) -> T:
    """Run ``work(app, deadline)`` on the container's loop; ``deadline`` is a
    ``time.monotonic()`` value. Whatever the work started and did not finish
    by then is handed back before returning."""
    deadline = time.monotonic() + budget(context)
    return loop().run_until_complete(_invocation(work, deadline))


async def _invocation(work: Callable[[App, float], Awaitable[T]], deadline: float) -> T:
    application = await app()
    beats = asyncio.create_task(_heartbeats(application))
    try:
        return await work(application, deadline)
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats
        queued = application.agents.queued_tasks
        await queued.settle(max(0.0, deadline - time.monotonic()))
        handed_back = await queued.release()
        if handed_back:
            log.warning("invocation out of time; tasks handed back", extra={"count": handed_back})


async def _heartbeats(application: App) -> None:
    """Keep this container's instance fresh while an invocation runs."""
    from datamcp.core import instances

    every = application.settings.health.interval
    while True:
        if time.monotonic() - _this.heartbeat_at >= every:
            try:
                await instances.heartbeat(application.uow, application.instance.id)
                _this.heartbeat_at = time.monotonic()
            except Exception:
                log.warning("instance heartbeat failed", exc_info=True)
        await asyncio.sleep(every)


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def shutdown() -> None:
    """Close the application and the loop (tests and local runs; Lambda just
    freezes and eventually discards the container)."""
    current = _this.loop
    if current is not None and not current.is_closed():
        if _this.app is not None:
            current.run_until_complete(_this.app.close())
        current.run_until_complete(current.shutdown_asyncgens())
        current.close()
    _this.app, _this.loop, _this.heartbeat_at = None, None, 0.0


def describe(exc: BaseException) -> dict[str, Any]:
    """A failure as log fields: the core's reason when it has one."""
    return {"error": f"{type(exc).__name__}: {exc}", "reason": getattr(exc, "reason", "")}
