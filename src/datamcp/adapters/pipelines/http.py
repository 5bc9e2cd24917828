"""HTTP JSON API source: pages through a configured API (page, offset or
cursor pagination) behind a :class:`CallGuard` per API (rate limit, circuit
breaker, retries with backoff honouring Retry-After, per-attempt timeout).

Only APIs in ``pipelines.http_apis`` can be reached (their base URL is the
allow-list), with the configured headers (credentials) on every request;
paths cannot leave the base URL and redirects are not followed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from datamcp.adapters.http_api import ApiConfig, parse_retry_after, target_url
from datamcp.core.agents.agent import AgentError
from datamcp.core.errors import FieldViolation, ResourceExhausted, Unavailable
from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.frame import RowBatches
from datamcp.core.pipelines.ports import PermanentError, SourceBatch, TransientError
from datamcp.core.resilience import CallGuard

MAX_BODY = 32 * 1024 * 1024


class _Retry(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def make_guard(api: ApiConfig) -> CallGuard:
    return api.guard(f"pipeline-http:{api.name}", _Retry)


def dig(data: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        if isinstance(data, Mapping):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


class HttpSource:
    def __init__(
        self,
        api: ApiConfig,
        guard: CallGuard,
        options: Mapping[str, Any],
        *,
        budget: float,
        display: str = "",
    ) -> None:
        self.api = api
        self.guard = guard
        self.options = options
        self.budget = budget
        self.display = display or f"http {api.name}"
        self._session: aiohttp.ClientSession | None = None
        self._columns: list[str] = list(options.get("columns") or [])
        self._pending: list[dict[str, Any]] = []
        self._pending_rejects: list[tuple[Any, str, int]] = []
        self._pages = 0
        self._done = False
        pag = options["pagination"]
        self._kind = pag["type"]
        self._position: Any = pag["start"]
        self._cursor: str | None = None
        self._count = 0

    async def open(self) -> list[str]:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        try:
            self.url = target_url(self.api.base_url, self.options.get("path", ""))
        except AgentError as exc:
            raise PermanentError(f"{self.display}: {exc}", "SOURCE_ERROR") from None
        if not self._columns:
            await self._fetch()
            seen: dict[str, None] = {}
            for record in self._pending[:1000]:
                for key in record:
                    seen.setdefault(str(key), None)
            self._columns = list(seen)
        self._batches = RowBatches(self._columns)
        return list(self._columns)

    def _query(self) -> list[tuple[str, str]]:
        pag = self.options["pagination"]
        query = list(self.options.get("query", {}).items())
        if self._kind in ("page", "offset"):
            query.append((pag["param"], str(self._position)))
        elif self._kind == "cursor" and self._cursor is not None:
            query.append((pag["param"], self._cursor))
        if self._kind != "none" and pag["size_param"]:
            query.append((pag["size_param"], str(pag["page_size"])))
        return query

    async def _fetch(self) -> None:  # noqa: PLR0915
        """Fetch the next page into the pending records."""
        if self._done:
            return
        pag = self.options["pagination"]
        if self._pages >= pag["max_pages"]:
            self._done = True
            return
        assert self._session is not None
        session, query = self._session, self._query()

        async def attempt() -> Any:
            try:
                async with session.get(
                    self.url,
                    params=query,
                    headers=dict(self.api.headers),
                    allow_redirects=False,
                ) as resp:
                    body = await resp.content.read(MAX_BODY + 1)
                    if resp.status == 429 or resp.status >= 500:
                        raise _Retry(
                            f"answered {resp.status}",
                            parse_retry_after(resp.headers.get("Retry-After")),
                        )
                    if resp.status >= 300:
                        raise PermanentError(
                            f"{self.display}: {self.url.path} answered {resp.status}: "
                            f"{body[:200].decode('utf-8', 'replace')}",
                            f"HTTP_{resp.status}",
                        )
                    if len(body) > MAX_BODY:
                        raise PermanentError(
                            f"{self.display}: a page is over 32 MiB", "SOURCE_ERROR"
                        )
                    return json.loads(body)
            except aiohttp.ClientError as exc:
                raise _Retry(f"connection failed: {exc!r}") from exc

        try:
            data = await self.guard.call(attempt, timeout=self.budget)
        except (_Retry, TimeoutError, Unavailable, ResourceExhausted) as exc:
            raise TransientError(f"{self.display}: {exc}") from None
        except ValueError as exc:
            raise PermanentError(
                f"{self.display}: the answer is not JSON: {exc}", "SOURCE_ERROR"
            ) from None
        self._pages += 1
        records = (
            dig(data, self.options.get("records", "")) if self.options.get("records") else data
        )
        if not isinstance(records, list):
            raise PermanentError(
                f"{self.display}: no list of records at {self.options.get('records') or 'the top'}",
                "SOURCE_ERROR",
            )
        for record in records:
            self._count += 1
            if isinstance(record, dict):
                self._pending.append(record)
            else:
                self._pending_rejects.append(
                    ({"_record": record}, "record is not a JSON object", self._count)
                )
        if self._kind == "none" or not records:
            self._done = True
        elif self._kind == "page":
            self._position += 1
            if pag["size_param"] and len(records) < pag["page_size"]:
                self._done = True
        elif self._kind == "offset":
            self._position += len(records)
            if pag["size_param"] and len(records) < pag["page_size"]:
                self._done = True
        else:
            nxt = dig(data, pag["cursor_path"])
            if nxt in (None, "") or str(nxt) == self._cursor:
                self._done = True
            else:
                self._cursor = str(nxt)

    async def read(self, size: int) -> SourceBatch | None:
        while len(self._pending) < size and not self._done:
            await self._fetch()
        if not self._pending and not self._pending_rejects:
            return None
        take, self._pending = self._pending[:size], self._pending[size:]
        rejects, self._pending_rejects = self._pending_rejects, []
        cols = self._columns
        table, rejects = self._batches.table([[r.get(c) for c in cols] for r in take], rejects)
        return SourceBatch(table, rejects)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# ---- the ``http`` kind --------------------------------------------------------------------

KIND = "http"


def parse_source(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = c.mapping(raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("api", "path", "query", "records", "pagination", "columns"))
    return {
        "api": c.string(o, "api", path, required=True),
        "path": c.string(o, "path", path),
        "query": c.str_map(o.get("query"), f"{path}.query"),
        "records": c.string(o, "records", path),
        "pagination": _pagination(c, o.get("pagination"), f"{path}.pagination"),
        "columns": c.names(o.get("columns"), f"{path}.columns"),
    }


def _pagination(c: Checker, raw: Any, path: str) -> dict[str, Any]:
    o = c.mapping(raw, path) or {}
    c.unknown(
        o, path, ("type", "param", "size_param", "page_size", "start", "cursor_path", "max_pages")
    )
    kind = c.choice(o, "type", path, ("none", "page", "offset", "cursor"))
    out = {
        "type": kind,
        "param": c.string(o, "param", path)
        or {"page": "page", "offset": "offset", "cursor": "cursor"}.get(kind, ""),
        "size_param": c.string(o, "size_param", path),
        "page_size": c.integer(o, "page_size", path, 100, 1, 10_000),
        "start": c.integer(o, "start", path, 1 if kind == "page" else 0, 0, 2**62),
        "cursor_path": c.string(o, "cursor_path", path),
        "max_pages": c.integer(o, "max_pages", path, 10_000, 1, 1_000_000),
    }
    if kind == "cursor" and not out["cursor_path"]:
        c.fail(f"{path}.cursor_path", "required for cursor pagination")
    return out


def check_source(connectors: Any, o: Mapping[str, Any], path: str, problems: list[Any]) -> None:
    if o["api"] not in connectors.apis:
        known = ", ".join(sorted(connectors.apis)) or "none configured"
        problems.append(
            FieldViolation(
                f"{path}.api", f"unknown API {o['api']!r} (pipelines.http_apis: {known})"
            )
        )


def source(connectors: Any, o: Mapping[str, Any], ctx: Any, where: str) -> HttpSource:
    api = connectors.apis.get(o["api"])
    if api is None:
        raise PermanentError(f"{where}.api: unknown API {o['api']!r}", "INVALID_PIPELINE")
    return HttpSource(
        api, connectors.guards[api.name], o, budget=connectors.http_budget, display=where
    )
