"""The ``http`` agent: requests to configured HTTP APIs, and nowhere else.

Each API has a base URL, headers from config (credentials: sent with every
request, never overridden by one) and its own :class:`CallGuard` (rate
limit, circuit breaker, retries with backoff, per-attempt timeout). A
request names the API and a path under its base URL; absolute URLs, dot
segments, encoded slashes and redirects cannot lead elsewhere.

Connection errors, timeouts, 429 and 5xx answers are retried (after the
``Retry-After`` the server asks for, capped). POST and PATCH are retried
only when the request cannot have been applied: the connection was never
made, or the answer was 429. Other 4xx answers fail at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from datamcp.adapters.http_api import (
    ApiConfig,
    api_config,
    number_setting,
    parse_retry_after,
    query_pairs,
    request_headers,
    target_url,
)
from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext, TaskRefused
from datamcp.core.errors import ConfigError, ResourceExhausted, Unavailable

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
#: Answers that say the request itself was wrong (not the API's fault): 4xx
#: except timeouts and rate limits.
_CALLER_STATUSES = frozenset(range(400, 500)) - {408, 429}

#: Response headers passed back to the caller.
_KEPT_HEADERS = frozenset(
    {
        "cache-control",
        "content-language",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "last-modified",
        "link",
        "location",
        "retry-after",
        "x-request-id",
    }
)
_KEPT_PREFIXES = ("ratelimit-", "x-ratelimit-")

_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["api", "path"],
    "additionalProperties": False,
    "properties": {
        "api": {"type": "string", "minLength": 1, "description": "configured API name"},
        "method": {"enum": list(METHODS), "default": "GET"},
        "path": {"type": "string", "description": "relative to the API's base URL"},
        "query": {
            "type": "object",
            "additionalProperties": {
                "type": ["string", "number", "integer", "boolean", "array"],
                "items": {"type": ["string", "number", "integer", "boolean"]},
            },
        },
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "json": {"description": "request body, sent as JSON"},
    },
}

_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "headers", "json", "text"],
    "properties": {
        "status": {"type": "integer"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "json": {},
        "text": {"type": ["string", "null"]},
        "truncated": {"type": "boolean"},
    },
}


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: URL
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]
    data: bytes | None


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool
    content_type: str
    charset: str | None


class _Transient(Exception):
    """A failure another attempt may cure. ``applied`` is False when the
    request cannot have had an effect (never sent, or refused with 429)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        applied: bool = True,
        body: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.applied = applied
        self.body = body


class HttpAgent(Agent):
    """Calls configured HTTP APIs through one pooled aiohttp session.

    Config keys:
        apis: name -> table with ``base_url`` (http/https), ``headers``
            (sent with every request, win over request headers), ``timeout``
            (seconds per attempt, default 10), ``rate`` (requests/s, default
            10; 0 = unlimited), ``burst`` (default ``rate``), ``max_attempts``
            (default 3), ``failure_threshold`` (default 5), ``recovery_time``
            (seconds, default 30), ``max_retry_after`` (seconds, default 30).
        max_body_bytes: most response bytes read (default 1 MiB).
        max_text_chars: most characters of a non-JSON body returned (default 65536).
    """

    name = "http"
    description = "HTTP requests to configured APIs, with rate limits, retries and a breaker"
    capabilities = (
        Capability(
            "http.request",
            "Send a request to a path under a configured API's base URL",
            _REQUEST_SCHEMA,
            _RESULT_SCHEMA,
        ),
    )

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        problems: list[str] = []
        apis = self.config.get("apis", {})
        if not isinstance(apis, Mapping):
            problems.append("http agent: apis must be a table of name = {base_url, ...}")
            apis = {}
        self.apis: dict[str, ApiConfig] = {}
        for api_name, table in apis.items():
            api = api_config(str(api_name), table, problems)
            if api is not None:
                self.apis[api.name] = api
        self.max_body_bytes = number_setting(
            self.config, "max_body_bytes", 1 << 20, int, problems=problems, positive=True
        )
        self.max_text_chars = number_setting(
            self.config, "max_text_chars", 65536, int, problems=problems, positive=True
        )
        if problems:
            raise ConfigError(problems)
        self.guards = {n: api.guard(f"http:{n}", _Transient) for n, api in self.apis.items()}
        self._session: aiohttp.ClientSession | None = None

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        if capability != "http.request":
            raise TaskRefused(f"http agent has no capability {capability}", reason="NO_CAPABILITY")
        if not isinstance(payload, Mapping):
            raise TaskRefused("input must be an object", reason="INVALID_INPUT")
        api = self.apis.get(str(payload.get("api")))
        if api is None:
            known = ", ".join(sorted(self.apis)) or "none configured"
            raise AgentError(
                f"unknown api {payload.get('api')!r} (known: {known})", reason="UNKNOWN_API"
            )
        method = str(payload.get("method", "GET")).upper()
        if method not in METHODS:
            raise TaskRefused(f"method must be one of {', '.join(METHODS)}", reason="INVALID_INPUT")
        url = target_url(api.base_url, payload.get("path"))
        query = query_pairs(payload.get("query"))
        headers = request_headers(api, payload.get("headers"))
        data = None
        if "json" in payload:
            try:
                data = json.dumps(payload["json"], allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise TaskRefused(f"json body: {exc}", reason="INVALID_INPUT") from exc
            headers.setdefault("Content-Type", "application/json")
        request = _Request(method, url, query, headers, data)
        session = self._client()

        async def attempt() -> _Response:
            return await self._send(session, request)

        retry_if = None if method in _IDEMPOTENT else _safe_to_repeat
        try:
            response = await self.guards[api.name].call(
                attempt, timeout=ctx.remaining(), retry_if=retry_if
            )
        except Unavailable as exc:
            raise AgentError(str(exc), reason=exc.reason, retryable=True) from exc
        except ResourceExhausted as exc:
            raise AgentError(str(exc), reason=exc.reason, retryable=True) from exc
        except TimeoutError as exc:
            raise AgentError(
                f"{api.name}: {method} {url.path} timed out", reason="HTTP_TIMEOUT", retryable=True
            ) from exc
        except _Transient as exc:
            reason = f"HTTP_{exc.status}" if exc.status else "HTTP_UNAVAILABLE"
            detail = f"{exc}: {exc.body}" if exc.body else str(exc)
            raise AgentError(
                f"{api.name}: {method} {url.path} failed: {detail}", reason=reason, retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise AgentError(
                f"{api.name}: {method} {url.path} failed: {exc!r}", reason="HTTP_ERROR"
            ) from exc
        if response.status >= 400:
            snippet = _decode(response.body, response.charset)[:300]
            message = f"{api.name}: {method} {url.path} answered {response.status}: {snippet}"
            if response.status in _CALLER_STATUSES:  # what was asked for is wrong
                raise TaskRefused(message, reason=f"HTTP_{response.status}")
            raise AgentError(message, reason=f"HTTP_{response.status}")
        return self._result(response)

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None),  # the guard times attempts
                cookie_jar=aiohttp.DummyCookieJar(),  # no state between callers
                connector=aiohttp.TCPConnector(limit=100),
                trust_env=False,
            )
        return self._session

    async def _send(self, session: aiohttp.ClientSession, request: _Request) -> _Response:
        try:
            async with session.request(
                request.method,
                request.url,
                params=request.query or None,
                headers=request.headers,
                data=request.data,
                allow_redirects=False,
            ) as resp:
                body_bytes, truncated = await _read(resp, self.max_body_bytes)
                response = _Response(
                    status=resp.status,
                    headers={
                        k.lower(): v
                        for k, v in resp.headers.items()
                        if k.lower() in _KEPT_HEADERS or k.lower().startswith(_KEPT_PREFIXES)
                    },
                    body=body_bytes,
                    truncated=truncated,
                    content_type=resp.content_type,
                    charset=resp.charset,
                )
        except aiohttp.ClientConnectorError as exc:
            raise _Transient(f"cannot connect: {exc}", applied=False) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise _Transient(f"connection failed: {exc!r}") from exc
        status = response.status
        if status == 429 or status >= 500:
            raise _Transient(
                f"answered {status}",
                status=status,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                applied=status != 429,
                body=_decode(response.body, response.charset)[:300],
            )
        return response

    def _result(self, response: _Response) -> dict[str, Any]:
        parsed: Any = None
        is_json = False
        mime = response.content_type.lower()
        if (mime == "application/json" or mime.endswith("+json")) and not response.truncated:
            try:
                parsed = json.loads(
                    response.body.decode(response.charset or "utf-8"), parse_constant=_no_nan
                )
                is_json = True
            except (ValueError, LookupError):
                pass  # returned as text
        text: str | None = None
        truncated = response.truncated
        if not is_json:
            text = _decode(response.body, response.charset)
            if len(text) > self.max_text_chars:
                text, truncated = text[: self.max_text_chars], True
        return {
            "status": response.status,
            "headers": response.headers,
            "json": parsed,
            "text": text,
            "truncated": truncated,
        }


def _no_nan(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _safe_to_repeat(exc: BaseException) -> bool:
    return isinstance(exc, _Transient) and not exc.applied


async def _read(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        room = limit - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
