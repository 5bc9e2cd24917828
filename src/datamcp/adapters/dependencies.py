"""Health checks for configured external dependencies (``health.dependencies``).

``tcp://host:port`` opens and closes a connection; ``http(s)://url`` makes a
GET and treats any answer below 500 as alive. A critical dependency that is
down takes the server to NOT_SERVING; a non-critical one only degrades it.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from datamcp.config.settings import Dependency
from datamcp.core.health import CheckResult, Status


class DependencyCheck:
    def __init__(self, dependency: Dependency, timeout: float) -> None:
        self.name = f"dependency:{dependency.name}"
        self.critical = dependency.critical
        self._target = dependency.target
        self._timeout = timeout
        self._down = Status.UNHEALTHY if dependency.critical else Status.DEGRADED

    async def check(self) -> CheckResult:
        try:
            if self._target.startswith("tcp://"):
                detail = await self._tcp()
            else:
                detail = await asyncio.to_thread(self._http)
        except (OSError, TimeoutError, ValueError) as exc:
            return CheckResult(self._down, f"{self._target} unreachable: {exc}")
        return CheckResult(Status.HEALTHY, detail)

    async def _tcp(self) -> str:
        parts = urlsplit(self._target)
        if not parts.hostname or parts.port is None:
            raise ValueError("expected tcp://host:port")
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port), self._timeout
        )
        writer.close()
        await writer.wait_closed()
        return f"{self._target} accepts connections"

    def _http(self) -> str:
        request = urllib.request.Request(self._target, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                code = response.status
        except urllib.error.HTTPError as exc:
            code = exc.code
        if code >= 500:
            raise OSError(f"HTTP {code}")
        return f"{self._target} answered HTTP {code}"
