"""``datamcp serve --workers N``: N server processes on one port.

Each worker is a whole ``datamcp serve`` (its own instance id, event loop,
engine and agents: a replica, with everything replicas guarantee over one
PostgreSQL database) started with the same command line plus
``--workers 1`` and ``DATAMCP_SERVER_REUSE_PORT=true``, so all of them bind
the listen port with SO_REUSEPORT and the kernel spreads connections over
them. The supervisor only starts, watches and stops them:

- SIGTERM / SIGINT go to every worker; each stops gracefully (its own
  ``server.shutdown_grace``); a worker still there after the grace plus a
  margin is killed. Exit 0 once all have stopped.
- A worker that dies while serving (a crash, kill -9) is started again after
  a short pause; its unfinished work is taken over like any dead replica's.
- A worker that fails to start (bad config, database down) stops them all,
  and the supervisor exits with its status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from datamcp.config.settings import Settings

log = logging.getLogger("datamcp.workers")

#: Seconds between looks at the workers.
_TICK = 0.2
#: A worker that lives at least this long had started fine.
_STARTED = 5.0
#: Seconds before a crashed worker is started again.
_RESTART_PAUSE = 1.0
#: Beyond the shutdown grace: what stopping (bus drain, closing) may take.
_STOP_MARGIN = 15.0


class Supervisor:
    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self._count = settings.server.workers
        self._grace = settings.server.shutdown_grace
        self._command = [sys.executable, "-m", "datamcp.entrypoints.cli", *argv, "--workers", "1"]
        self._env = {**os.environ, "DATAMCP_SERVER_REUSE_PORT": "true"}
        self._workers: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for slot in range(self._count):
            self._start(slot)
        log.info("workers started", extra={"workers": self._count})
        while not self._stopping:
            time.sleep(_TICK)
            failed = self._check()
            if failed is not None:
                self._stop_all()
                return failed
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self, slot: int) -> None:
        process = subprocess.Popen(self._command, env=self._env)
        self._workers[slot] = (process, time.monotonic())

    def _check(self) -> int | None:
        """Restart a worker that died while serving; the exit status of one
        that could not start (the supervisor then stops)."""
        for slot, (process, started) in list(self._workers.items()):
            code = process.poll()
            if code is None or self._stopping:
                continue
            if time.monotonic() - started < _STARTED and code in (1, 2):
                log.error("worker %d could not start (exit %d); stopping", slot, code)
                return code
            log.warning("worker %d exited with %d; starting it again", slot, code)
            time.sleep(_RESTART_PAUSE)
            self._start(slot)
        return None

    def _stop_all(self) -> int:
        self._stopping = True
        processes = [process for process, _ in self._workers.values()]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace + _STOP_MARGIN
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
        return 0


def run_workers(settings: Settings, argv: Sequence[str]) -> int:
    """Serve with ``settings.server.workers`` processes; see the module doc."""
    return Supervisor(settings, argv).run()
