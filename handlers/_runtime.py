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
  ``replicas.stale_after``.
- The dead-letter queue client (``serverless.dead_letter_queue_url``), made
  on the first permanent failure (``_failures``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from handlers import _telemetry

if TYPE_CHECKING:
    from datamcp.adapters.aws.dead_letters import Letter, SqsDeadLetters
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
    dead_letters: SqsDeadLetters | None = None


_this = _Container()


class LambdaContext(Protocol):
    """The part of the Lambda context object the handlers use."""

    aws_request_id: str
    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int

    def get_remaining_time_in_millis(self) -> int: ...


class LocalContext:
    """A context for local runs (``datamcp lambda-local``, tests): the
    function timeout counts down from construction."""

    def __init__(self, timeout: float = 30.0, function_name: str = "datamcp-local") -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.memory_limit_in_mb = 0
        self.aws_request_id = str(uuid.uuid4())
        self._ends = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._ends - time.monotonic()) * 1000))


def local_context() -> LocalContext:
    """The context of a direct call that passes none."""
    return LocalContext(DEFAULT_BUDGET)


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

        settings = load_settings()
        _telemetry.install(settings.logging.level)
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

    every = application.settings.replicas.heartbeat_interval
    while True:
        if time.monotonic() - _this.heartbeat_at >= every:
            try:
                await instances.heartbeat(application.uow, application.instance.id)
                _this.heartbeat_at = time.monotonic()
            except Exception:
                log.warning("instance heartbeat failed", exc_info=True)
        await asyncio.sleep(every)


async def dead_letter(app: App, letters: Sequence[Letter]) -> list[tuple[str, str]]:
    """Send letters to the dead-letter queue; returns (id, error code) of those
    not sent (all of them when no queue is configured: the caller then fails
    them like transient errors, so nothing is lost)."""
    url = app.settings.serverless.dead_letter_queue_url
    if not letters:
        return []
    if url is None:
        return [(letter.id, "NoDeadLetterQueue") for letter in letters]
    if _this.dead_letters is None:
        from datamcp.adapters.aws.dead_letters import SqsDeadLetters

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        _this.dead_letters = SqsDeadLetters(url, region=region)
    return await _this.dead_letters.send(letters)


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def shutdown() -> None:
    """Close the application and the loop (tests and local runs; Lambda just
    freezes and eventually discards the container)."""
    current = _this.loop
    if current is not None and not current.is_closed():
        if _this.dead_letters is not None:
            current.run_until_complete(_this.dead_letters.close())
        if _this.app is not None:
            current.run_until_complete(_this.app.close())
        current.run_until_complete(current.shutdown_asyncgens())
        current.close()
    _this.app, _this.loop, _this.heartbeat_at, _this.dead_letters = None, None, 0.0, None
