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

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext, TaskRefused
from datamcp.core.errors import ConfigError, ResourceExhausted, Unavailable
from datamcp.core.ratelimit import TokenBucket
from datamcp.core.resilience import CallGuard, CircuitBreaker, RetryPolicy

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
#: Answers that say the request itself was wrong (not the API's fault): 4xx
#: except timeouts and rate limits.
_CALLER_STATUSES = frozenset(range(400, 500)) - {408, 429}

#: Request headers a caller may not set: they would change where or how the
#: request travels rather than what it asks.
_REFUSED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy-connection",
    }
)

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
class ApiConfig:
    """One configured API (an entry of the agent's ``apis`` table)."""

    name: str
    base_url: URL
    headers: Mapping[str, str]
    timeout: float = 10.0
    rate: float | None = 10.0
    burst: int = 10
    max_attempts: int = 3
    failure_threshold: int = 5
    recovery_time: float = 30.0
    max_retry_after: float = 30.0

    def guard(self, dependency: str, retry_on: type[Exception]) -> CallGuard:
        """The resilience layer for calls to this API (one per user of it)."""
        return CallGuard(
            dependency,
            limiter=TokenBucket(self.rate, self.burst) if self.rate else None,
            breaker=CircuitBreaker(
                dependency,
                failure_threshold=self.failure_threshold,
                recovery_time=self.recovery_time,
            ),
            retry=RetryPolicy(max_attempts=self.max_attempts, base_delay=0.1, max_delay=2.0),
            attempt_timeout=self.timeout,
            retry_on=retry_on,
            max_retry_after=self.max_retry_after,
        )


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
            api = _api_config(str(api_name), table, problems)
            if api is not None:
                self.apis[api.name] = api
        self.max_body_bytes = _number(
            self.config, "max_body_bytes", 1 << 20, int, problems=problems, positive=True
        )
        self.max_text_chars = _number(
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
        query = _query(payload.get("query"))
        headers = _headers(api, payload.get("headers"))
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


def target_url(base: URL, path: Any) -> URL:
    """The URL for ``path`` under ``base``.

    Raises:
        AgentError: reason ``URL_NOT_ALLOWED`` when the path is absolute, has
            a scheme, a query or fragment, dot segments or encoded slashes, or
            would otherwise leave the base URL.
    """

    def refuse(why: str) -> TaskRefused:
        return TaskRefused(f"path {path!r} not allowed: {why}", reason="URL_NOT_ALLOWED")

    if not isinstance(path, str):
        raise refuse("it must be a string")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in path) or "\\" in path:
        raise refuse("it contains spaces, control characters or backslashes")
    if "?" in path or "#" in path:
        raise refuse("put query parameters in 'query'")
    if path.startswith("//") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        raise refuse("only paths relative to the API's base URL are accepted")
    relative = path.lstrip("/")
    for segment in relative.split("/"):
        decoded = unquote(segment)
        if decoded in {".", ".."}:
            raise refuse("dot segments are not accepted")
        if "/" in decoded or "\\" in decoded or "%" in decoded:
            raise refuse("encoded slashes or double encoding are not accepted")
    base_path = base.path.rstrip("/") + "/"
    url = URL(str(base.with_path(base_path).with_query(None)) + relative).with_query(base.query)
    if (
        url.scheme != base.scheme
        or url.host != base.host
        or url.port != base.port
        or not url.path.startswith(base_path)
    ):
        raise refuse("it leaves the API's base URL")
    return url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, wait)


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


def _query(value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise TaskRefused("query must be an object", reason="INVALID_INPUT")
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        for one in item if isinstance(item, list) else [item]:
            if isinstance(one, bool):
                pairs.append((str(key), "true" if one else "false"))
            elif isinstance(one, str | int | float) and not (
                isinstance(one, float) and not math.isfinite(one)
            ):
                pairs.append((str(key), str(one)))
            else:
                raise TaskRefused(
                    f"query parameter {key!r}: values must be strings, numbers or booleans",
                    reason="INVALID_INPUT",
                )
    return pairs


def _headers(api: ApiConfig, value: Any) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    if value is not None:
        if not isinstance(value, Mapping):
            raise TaskRefused("headers must be an object", reason="INVALID_INPUT")
        for key, item in value.items():
            name = str(key)
            if name.lower() in _REFUSED_HEADERS:
                raise TaskRefused(f"header {name} may not be set", reason="HEADER_NOT_ALLOWED")
            if not isinstance(item, str) or "\r" in item or "\n" in item:
                raise TaskRefused(f"header {name}: value must be one line", reason="INVALID_INPUT")
            headers[name] = item
    for name, item in api.headers.items():
        headers.popall(name, None)
        headers[name] = item
    return headers


def _api_config(name: str, table: Any, problems: list[str]) -> ApiConfig | None:
    where = f"http agent: api {name!r}"
    if not isinstance(table, Mapping):
        problems.append(f"{where}: expected a table with base_url")
        return None
    raw_url = str(table.get("base_url", ""))
    try:
        base = URL(raw_url)
    except ValueError:
        base = URL()
    if base.scheme not in {"http", "https"} or not base.host or base.fragment:
        problems.append(f"{where}: base_url must be an http:// or https:// URL, got {raw_url!r}")
        return None
    headers = table.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(v, str) and "\n" not in v and "\r" not in v for v in headers.values()
    ):
        problems.append(f"{where}: headers must be a table of name = one-line string")
        headers = {}

    def number(key: str, default: Any, kind: type, positive: bool = False) -> Any:
        return _number(table, key, default, kind, problems=problems, where=where, positive=positive)

    rate = number("rate", 10.0, float)
    return ApiConfig(
        name=name,
        base_url=base,
        headers={str(k): str(v) for k, v in headers.items()},
        timeout=number("timeout", 10.0, float, positive=True),
        rate=rate or None,
        burst=number("burst", max(1, math.ceil(rate)), int, positive=True),
        max_attempts=number("max_attempts", 3, int, positive=True),
        failure_threshold=number("failure_threshold", 5, int, positive=True),
        recovery_time=number("recovery_time", 30.0, float),
        max_retry_after=number("max_retry_after", 30.0, float),
    )


def _number(
    table: Mapping[str, Any],
    key: str,
    default: Any,
    kind: type,
    *,
    problems: list[str],
    where: str = "",
    positive: bool = False,
) -> Any:
    value = table.get(key, default)
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if not bad and kind is int and not float(value).is_integer():
        bad = True
    if bad or value < 0 or (positive and value == 0):
        sign = "a positive" if positive else "a non-negative"
        problems.append(f"{where or 'http agent'}: {key} must be {sign} number, got {value!r}")
        return default
    return kind(value)
