"""A blocking facade for scripts: the same API without ``await``.

It runs the async :class:`datamcp_client.Client` on an event loop in a
background thread; coroutine methods block until done and async iterators
become plain iterators.

Example:
    from datamcp_client.sync import Client

    with Client.connect("127.0.0.1:50051") as client:
        task = client.agents.execute("echo", {"a": 1})
        print(task.result)                      # {'a': 1}
        for event in client.events.replay(types=["task.*"], limit=3):
            print(event.type)
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from datamcp_client.client import DEFAULT_ADDRESS
from datamcp_client.client import Client as AsyncClient


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def iterate(self, iterator: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    item = self.run(iterator.__anext__())
                except StopAsyncIteration:
                    return
                yield _wrap(self, item)
        finally:
            close = getattr(iterator, "aclose", None) or getattr(iterator, "close", None)
            if close is not None and not self.loop.is_closed():
                self.run(close())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _wrap(loop: _Loop, value: Any) -> Any:
    if inspect.iscoroutine(value):
        return _wrap(loop, loop.run(value))
    if hasattr(value, "__anext__"):
        return loop.iterate(value)
    if hasattr(value, "ack") and hasattr(value, "nack"):  # a Delivery: ack()/nack() block
        return _Proxy(loop, value)
    return value


class _Proxy:
    """Forwards attribute access; calls block on the background loop."""

    def __init__(self, loop: _Loop, target: Any) -> None:
        self._loop = loop
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return _wrap(self._loop, attr(*args, **kwargs))

        return call

    def __repr__(self) -> str:
        return repr(self._target)


class Client:
    """The blocking client; ``agents``, ``events``, ``pipelines``, ``memory`` and
    ``health`` have the methods of the async sub-clients."""

    agents: Any
    events: Any
    pipelines: Any
    memory: Any
    health: Any

    def __init__(self, loop: _Loop, client: AsyncClient) -> None:
        self._loop = loop
        self._client = client
        for name in ("agents", "events", "pipelines", "memory", "health"):
            setattr(self, name, _Proxy(loop, getattr(client, name)))

    @classmethod
    def connect(cls, target: str = DEFAULT_ADDRESS, **kwargs: Any) -> Client:
        """Same arguments as :meth:`datamcp_client.Client.connect`."""
        loop = _Loop()
        try:
            client = loop.run(AsyncClient.connect(target, **kwargs))
        except BaseException:
            loop.stop()
            raise
        return cls(loop, client)

    def close(self) -> None:
        self._loop.run(self._client.close())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
