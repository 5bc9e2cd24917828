"""Long-lived calls, and ending them when the server shuts down.

A stream (Subscribe, Watch*, Connect, PushRecords, the standard health
Watch) can stay open for hours. ``grpc.aio``'s ``server.stop(grace)``
waits for every call, streams included, until the grace is over and then
cuts them: a server with one idle watcher took the whole grace to stop, and
its clients saw the connection drop instead of being told to go elsewhere.
So each long-lived call is tracked, and :meth:`LiveCalls.end_all` ends
them at once with UNAVAILABLE (reason ``SERVER_SHUTTING_DOWN``): clients
reconnect, to another replica, while unary calls in flight still get the
grace.

A call is ended by cancelling its task where it waits in our code (for the
next delivery, a change, a request). While it is suspended in a ``yield``,
grpc is sending that response from the same task; cancelling it there
would break grpc's send, so the call is only marked and ends as soon as
the send is done (:meth:`LiveCall.sent`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from datamcp.core.errors import Unavailable


def shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down; reconnect (another replica will serve you)",
        reason="SERVER_SHUTTING_DOWN",
    )


class LiveCall:
    """One long-lived call: its task and whether grpc is sending for it."""

    __slots__ = ("ended", "exiting", "sending", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.sending = False
        self.ended = False
        self.exiting = False  # answering UNAVAILABLE: leave it be

    def end(self) -> None:
        """Ask the call to end. Asking again cancels again, unless the call is
        answering already: a handler may have swallowed the first
        cancellation (``asyncio.wait_for`` on Python 3.11 can)."""
        if self.exiting:
            return
        self.ended = True
        if not self.sending:
            self.task.cancel()

    def sent(self) -> None:
        """The response yielded last has been sent: end here if asked to.

        Raises:
            Unavailable: the server is shutting down.
        """
        self.sending = False
        if self.ended:
            self.exiting = True
            raise shutting_down()

    def ended_here(self) -> bool:
        """On a CancelledError: whether it came from :meth:`end` (then the
        cancellation is taken back, so the call can still answer)."""
        if not self.ended:
            return False
        self.exiting = True
        while self.task.uncancel():
            pass
        return True


class LiveCalls:
    """The long-lived calls of one server."""

    def __init__(self) -> None:
        self._calls: set[LiveCall] = set()
        self.closing = False

    def open(self) -> LiveCall:
        """Track the current task's call (ended at once when closing)."""
        task = asyncio.current_task()
        assert task is not None
        call = LiveCall(task)
        self._calls.add(call)
        if self.closing:
            call.end()
        return call

    def close(self, call: LiveCall) -> None:
        self._calls.discard(call)

    def end_all(self) -> None:
        """End every tracked call with UNAVAILABLE, and calls opened later."""
        self.closing = True
        for call in list(self._calls):
            call.end()

    def __len__(self) -> int:
        return len(self._calls)
