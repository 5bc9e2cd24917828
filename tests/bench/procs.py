"""Server subprocesses that announce their port on a line of output.

Both servers bind port 0 (so runs never collide with anything else on the
machine) and tell us the port they got: the bare server on stdout, the real
server in its "datamcp serving" JSON log line on stderr. Both pipes are
drained by threads for the whole life of the process, because a server that
blocks on a full pipe would show up as a latency spike, not as an error.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Subprocesses run here so ``python -m tests.bench.*`` and ``datamcp`` import."""

PortParser = Callable[[str], int | None]


class ServerProcess:
    """One server subprocess; use as a context manager so it is always stopped.

    Args:
        name: shown in error messages.
        argv: the command; run from the repository root.
        port_stream: the stream carrying the port line.
        parse_port: returns the port for the announcing line, else None.
        env: the whole environment (default: this process's).
        startup_timeout: seconds to wait for the port line.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port_stream: Literal["stdout", "stderr"],
        parse_port: PortParser,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port_stream = port_stream
        self.parse_port = parse_port
        self.env = dict(os.environ if env is None else env)
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._ports: queue.Queue[int] = queue.Queue()
        self._tail: deque[str] = deque(maxlen=40)
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ServerProcess:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> int:
        """Start the process and wait for its port.

        Raises:
            RuntimeError: the process exited or stayed silent past the timeout.
        """
        self._proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for stream_name, stream in (("stdout", self._proc.stdout), ("stderr", self._proc.stderr)):
            thread = threading.Thread(
                target=self._drain,
                args=(stream, stream_name == self.port_stream),
                name=f"{self.name}-{stream_name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            try:
                self.port = self._ports.get(timeout=0.1)
                return self.port
            except queue.Empty:
                if self._proc.poll() is not None:
                    time.sleep(0.2)  # let the drain threads catch the last words
                    raise RuntimeError(
                        f"{self.name} exited with {self._proc.returncode} before serving:\n"
                        + self.tail()
                    ) from None
        raise RuntimeError(
            f"{self.name} did not report a port within {self.startup_timeout:.0f}s:\n" + self.tail()
        )

    def _drain(self, stream: IO[str], announces_port: bool) -> None:
        for line in stream:
            self._tail.append(line.rstrip("\n"))
            if announces_port and not self.port:
                port = self.parse_port(line)
                if port:
                    self._ports.put(port)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the process so far (all threads); None off Linux.

        CPU per call is a steadier cost measure than QPS on a small machine,
        where the client and the server compete for the same cores.
        """
        if self._proc is None:
            return None
        try:
            stat = Path(f"/proc/{self._proc.pid}/stat").read_text(encoding="ascii")
        except OSError:
            return None
        # Fields after the parenthesised command; utime and stime are fields 14 and 15.
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def tail(self) -> str:
        """The last lines the process wrote (both streams), for diagnostics."""
        return "\n".join(self._tail)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {self.name} ignored SIGTERM; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        for thread in self._threads:
            thread.join(timeout=2.0)
