"""Signals (``core/signals.py``) over PostgreSQL LISTEN/NOTIFY.

One dedicated asyncpg connection per process listens on one channel and
sends what the process queues, coalesced: every loop turn's signals go out
as one ``SELECT pg_notify(...) FROM unnest(...)``. PostgreSQL delivers a
notification to every listening session (this one too: a payload carries its
origin, so a process ignores its own). A lost connection is retried with
backoff; while it is down ``connected`` is False, and once it is back every
handler is called with key "" because anything may have changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from datamcp.core.background import cancel_and_wait
from datamcp.core.resilience import RetryPolicy
from datamcp.core.signals import Handler, Handlers

log = logging.getLogger(__name__)

CHANNEL = "datamcp"
#: PostgreSQL refuses payloads of 8,000 bytes or more.
MAX_PAYLOAD = 7900
_RECONNECT = RetryPolicy(1_000_000, 0.2, 5.0)
_NOTIFY = "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload"


class PgSignals:
    """Signals between the processes that share one PostgreSQL database.

    Args:
        dsn: a ``postgresql://`` URL (libpq form, as asyncpg takes it).
        origin: this process's id (its own signals come back; they are dropped).
    """

    def __init__(self, dsn: str, origin: str, *, connect_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._origin = origin
        self._connect_timeout = connect_timeout
        self._handlers = Handlers()
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.sent = 0
        self.received = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def send(self, topic: str, key: str = "") -> None:
        payload = f"{self._origin}|{topic}|{key}"
        if len(payload.encode()) > MAX_PAYLOAD:
            payload = f"{self._origin}|{topic}|"  # too long to name: "anything"
        self._pending.add(payload)
        self._wake.set()

    def subscribe(self, topic: str, handler: Handler) -> Callable[[], None]:
        return self._handlers.add(topic, handler)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pg-signals")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await self._close()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("signals: cannot listen; polling meanwhile", exc_info=exc)
                await asyncio.sleep(_RECONNECT.delay(failures))
                continue
            if failures:
                log.info("signals: listening again")
                self._handlers.call_all()
            failures = 0
            await self._serve()
            await self._close()

    async def _connect(self) -> None:
        self._lost.clear()
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            conn.add_termination_listener(lambda _conn: self._lost.set())
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _serve(self) -> None:
        """Send what is queued until the connection is lost."""
        while not self._lost.is_set():
            if not self._pending:
                self._wake.clear()
                lost = asyncio.ensure_future(self._lost.wait())
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({lost, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lost.cancel()
                    woken.cancel()
                continue
            batch, self._pending = list(self._pending), set()
            try:
                await self._conn.execute(_NOTIFY, CHANNEL, batch)
                self.sent += len(batch)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("signals: send failed; reconnecting", exc_info=True)
                return

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, _, rest = payload.partition("|")
        if origin == self._origin:
            return
        topic, _, key = rest.partition("|")
        self.received += 1
        self._handlers.call(topic, key)
