"""Wake-ups across the processes that share one database (replicas, workers).

A process that commits a change other processes may be waiting for sends a
signal, a (topic, key) pair, after the commit; every other process sharing
the database receives it and wakes its own waiters. Signals are hints: at
most once, never durable, coalesced. A waiter always re-reads the store, and
keeps a slow poll as a fallback, so a lost signal (a dropped connection, a
restart) costs latency, never correctness.

Topics and their keys:

- ``events``: events were committed (key: a tenant, or ``*`` for several);
- ``tasks``: a task's row changed (key: the task id);
- ``cancel``: a cancel was requested for a task (key: the task id);
- ``work``: tasks wait in the shared queue (key: the capability);
- ``agents``: the agent directory changed;
- ``memory``: a memory store changed (key: the store id);
- ``streams``: records were pushed to a stream job (key: the job id).

Inside one process nothing needs a signal: local waiters are woken directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

log = logging.getLogger(__name__)

Handler = Callable[[str], None]


class Signals(Protocol):
    @property
    def connected(self) -> bool:
        """False while signals may be missed (a lost connection): poll faster."""
        ...

    def send(self, topic: str, key: str = "") -> None:
        """Tell the other processes; call after the commit it announces."""
        ...

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(key)`` for every signal of ``topic`` another process
        sends (``key`` is "" after a reconnect: anything may have changed).
        Returns the unsubscribe function. Handlers run on the event loop and
        must not block."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Handlers:
    """Handlers by topic, called safely (one failing handler stops no other)."""

    def __init__(self) -> None:
        self._by_topic: dict[str, list[Handler]] = {}

    def add(self, topic: str, handler: Handler) -> Callable[[], None]:
        handlers = self._by_topic.setdefault(topic, [])
        handlers.append(handler)

        def remove() -> None:
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def call(self, topic: str, key: str) -> None:
        for handler in list(self._by_topic.get(topic, ())):
            try:
                handler(key)
            except Exception:
                log.exception("signal handler failed", extra={"topic": topic})

    def call_all(self) -> None:
        """Every handler, with key "" (after a reconnect)."""
        for topic in list(self._by_topic):
            self.call(topic, "")


class LocalSignals:
    """One process alone on its database: nobody to tell."""

    def __init__(self) -> None:
        self._handlers = Handlers()

    @property
    def connected(self) -> bool:
        return True

    def send(self, topic: str, key: str = "") -> None:
        return None

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        return self._handlers.add(topic, handler)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Listener:
    """Signals about one key, heard since the last :meth:`wait`."""

    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    async def wait(self, within: float) -> None:
        """Return once a signal came since the last wait (at once if one
        already did), or after ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._event.wait()
        self._event.clear()


class KeyedWaiters:
    """Waiting for signals of one topic about one key (a task id, a store):
    one subscription for the topic, a dict of waiters by key."""

    def __init__(self, signals: Signals, topic: str) -> None:
        self._signals = signals
        self._waiting: dict[str, set[asyncio.Event]] = {}
        signals.subscribe(topic, self._on_signal)

    def poke(self, key: str) -> None:
        """Wake the waiters on ``key`` (a change made in this process, whose
        own signals do not come back to it)."""
        if key in self._waiting:
            self._on_signal(key)

    def _on_signal(self, key: str) -> None:
        if not key:
            for events in self._waiting.values():
                for event in events:
                    event.set()
            return
        for event in self._waiting.get(key, ()):
            event.set()

    @contextlib.contextmanager
    def listen(self, key: str) -> Iterator[Listener]:
        """Hear signals about ``key`` while inside: listen first, then read
        the store, then wait, and a signal sent during the read is not lost."""
        event = asyncio.Event()
        waiting = self._waiting.setdefault(key, set())
        waiting.add(event)
        try:
            yield Listener(event)
        finally:
            waiting.discard(event)
            if not waiting:
                self._waiting.pop(key, None)

    def poll_interval(self, slow: float, fast: float) -> float:
        """How long to wait between store reads: ``slow`` while signals flow,
        ``fast`` while they may be missed."""
        return slow if self._signals.connected else fast
