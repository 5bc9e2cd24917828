"""Configured HTTP APIs and the rules every request to one follows, for the
``http`` agent and the pipelines' ``http`` source alike.

An API is a base URL (http or https) with headers from config (credentials:
sent with every request, never overridden by one) and the settings of its
:class:`CallGuard`. A request names a path under the base URL: absolute
URLs, schemes, dot segments, encoded slashes and control characters cannot
lead elsewhere (:func:`target_url`). Headers that change where or how a
request travels cannot be set by a caller (:func:`request_headers`).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from multidict import CIMultiDict
from yarl import URL

from datamcp.core.agents.agent import TaskRefused
from datamcp.core.ratelimit import TokenBucket
from datamcp.core.resilience import CallGuard, CircuitBreaker, RetryPolicy

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


def api_config(name: str, table: Any, problems: list[str]) -> ApiConfig | None:
    """The API ``name`` of a config table, or None with what is wrong in ``problems``."""
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
        return number_setting(
            table, key, default, kind, problems=problems, where=where, positive=positive
        )

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


def number_setting(
    table: Mapping[str, Any],
    key: str,
    default: Any,
    kind: type,
    *,
    problems: list[str],
    where: str = "",
    positive: bool = False,
) -> Any:
    """``table[key]`` as a non-negative (or ``positive``) ``kind``; the default
    when absent, or when wrong (noted in ``problems``)."""
    value = table.get(key, default)
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if not bad and kind is int and not float(value).is_integer():
        bad = True
    if bad or value < 0 or (positive and value == 0):
        sign = "a positive" if positive else "a non-negative"
        problems.append(f"{where or 'http agent'}: {key} must be {sign} number, got {value!r}")
        return default
    return kind(value)


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


def query_pairs(value: Any) -> list[tuple[str, str]]:
    """The query parameters of a request (lists repeat the name)."""
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


def request_headers(api: ApiConfig, value: Any) -> CIMultiDict[str]:
    """A request's headers: the caller's (refused ones refused), then the API's
    configured headers over them."""
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
