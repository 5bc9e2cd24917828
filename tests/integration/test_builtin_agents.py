"""The built-in sql, http and profile agents, run directly against real parts:
SQLite files (and PostgreSQL when DATAMCP_TEST_PG_DSN is set), a local
aiohttp server, and files in a temporary directory.

The agents are called through ``agent.run(ctx, capability, payload)`` with a
small test context; the gRPC-level tests live elsewhere.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from datamcp.adapters.http_agent import HttpAgent
from datamcp.adapters.sqlalchemy import sql_agent as sql_module
from datamcp.adapters.sqlalchemy.engine import normalise_url
from datamcp.adapters.sqlalchemy.sql_agent import SqlAgent
from datamcp.core.agents.agent import Agent, AgentError, TaskContext
from datamcp.core.agents.builtin.profile import ProfileAgent
from datamcp.core.errors import ConfigError


class Ctx:
    """A TaskContext for calling agents directly; ``call`` runs sibling agents
    in-process by capability."""

    def __init__(self, timeout: float = 10.0, agents: Mapping[str, Agent] | None = None) -> None:
        self.task_id = "task-1"
        self.tenant = "default"
        self.correlation_id = "corr-1"
        self.attempt = 1
        self.deadline = time.time() + timeout
        self.reports: list[tuple[float, str]] = []
        self._agents = dict(agents or {})

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.time())

    async def progress(self, percent: float, message: str = "") -> None:
        self.reports.append((percent, message))

    async def call(self, target: str, payload: Any, timeout: float | None = None) -> Any:
        agent = self._agents.get(target)
        if agent is None:
            raise AgentError(f"no agent for {target}", reason="NO_AGENT")
        budget = self.remaining() if timeout is None else min(timeout, self.remaining())
        try:
            return await agent.run(Ctx(budget, self._agents), target, payload)
        except AgentError as exc:
            raise AgentError(f"{target} failed: {exc}", reason="CALL_FAILED") from exc


_: TaskContext = Ctx()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------- sql

ITEMS = [
    (1, "apple", "1.50", "2024-01-02", b"\x00\x01", True),
    (2, "banana", "0.25", "2024-02-03", None, False),
    (3, "o'brien", "3.00", None, None, None),
    (4, "cherry", "10.00", "2024-03-04", None, True),
    (5, "date", "2.75", "2024-04-05", None, False),
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
async def shop(sql_url: str) -> str:
    """``sql_url`` with an ``items`` table of five rows."""
    url = normalise_url(sql_url)
    pg = url.get_backend_name() == "postgresql"
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                    f"price NUMERIC(10, 2), added DATE, data {'BYTEA' if pg else 'BLOB'}, "
                    "active BOOLEAN)"
                )
            )
            for id_, name, price, added, data, active in ITEMS:
                await conn.execute(
                    text(
                        "INSERT INTO items VALUES (:id, :name, CAST(:price AS NUMERIC(10, 2)), "
                        + ("CAST(CAST(:added AS TEXT) AS DATE)" if pg else ":added")
                        + ", :data, :active)"
                    ),
                    {
                        "id": id_,
                        "name": name,
                        "price": price if pg else float(price),
                        "added": added,
                        "data": data,
                        "active": active,
                    },
                )
    finally:
        await engine.dispose()
    return sql_url


@pytest.fixture
async def sql(shop: str) -> AsyncIterator[SqlAgent]:
    agent = SqlAgent({"connections": {"shop": shop}, "row_limit": 3})
    try:
        yield agent
    finally:
        await agent.close()


async def query(agent: SqlAgent, sql_text: str, **extra: Any) -> dict[str, Any]:
    result = await agent.run(Ctx(), "sql.query", {"connection": "shop", "query": sql_text, **extra})
    assert isinstance(result, dict)
    json.dumps(result)  # JSON-safe
    return result


async def test_sql_rows_come_back_typed_and_json_safe(sql: SqlAgent, shop: str) -> None:
    result = await query(
        sql,
        "SELECT id, name, price, added, data, active FROM items WHERE id <= :max ORDER BY id",
        params={"max": 2},
    )
    assert [c["name"] for c in result["columns"]] == [
        "id",
        "name",
        "price",
        "added",
        "data",
        "active",
    ]
    assert result["row_count"] == 2 and result["truncated"] is False
    first = result["rows"][0]
    assert first[:4] == [1, "apple", 1.5, "2024-01-02"]
    assert first[4] == "AAE="  # base64 of the bytes
    assert first[5] in (True, 1)
    types = [c["type"] for c in result["columns"]]
    if shop.startswith("postgresql"):
        assert types == ["integer", "text", "numeric", "date", "bytea", "boolean"]
        assert first[5] is True
    else:  # SQLite does not describe result types: inferred from the values
        assert types[:3] == ["integer", "text", "real"] and types[4] == "blob"


async def test_sql_parameters_are_data_not_sql(sql: SqlAgent) -> None:
    sneaky = await query(
        sql, "SELECT id FROM items WHERE name = :name", params={"name": "apple' OR 1=1 --"}
    )
    assert sneaky["rows"] == []
    quoted = await query(sql, "SELECT id FROM items WHERE name = :name", params={"name": "o'brien"})
    assert quoted["rows"] == [[3]]
    literal = await query(sql, "SELECT ':not_a_param' AS v -- :nor_this")
    assert literal["rows"] == [[":not_a_param"]]


async def test_sql_dates_as_string_parameters(sql: SqlAgent, shop: str) -> None:
    # asyncpg types parameters from their use, so PostgreSQL needs the text cast.
    day = "CAST(CAST(:day AS TEXT) AS DATE)" if shop.startswith("postgresql") else ":day"
    by_day = await query(
        sql, f"SELECT id FROM items WHERE added >= {day} ORDER BY id", params={"day": "2024-03-01"}
    )
    assert by_day["rows"] == [[4], [5]]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO items (id, name) VALUES (9, 'x')",
        "DELETE FROM items",
        "UPDATE items SET name = 'x'",
        "SELECT 1; DROP TABLE items",
        "SELECT 1 /* harmless */; DROP TABLE items",
        "-- just a comment\nDROP TABLE items",
        "ATTACH DATABASE 'other.db' AS other",
        "PRAGMA query_only = OFF",
        "WITH gone AS (DELETE FROM items RETURNING *) SELECT * FROM gone",
        "SELECT * INTO copied FROM items",
        "CREATE TABLE t2 (a INTEGER)",
        "VALUES (1)",
        "SET search_path = elsewhere",
        "SELECT 'unterminated",
        "",
    ],
)
async def test_sql_refuses_anything_but_one_select(sql: SqlAgent, statement: str) -> None:
    with pytest.raises(AgentError) as err:
        await sql.run(Ctx(), "sql.query", {"connection": "shop", "query": statement})
    assert err.value.reason == "SQL_NOT_ALLOWED" and not err.value.retryable
    count = await query(sql, "SELECT COUNT(*) AS n FROM items")
    assert count["rows"] == [[5]]


async def test_sql_runs_read_only_even_past_the_statement_check(
    sql: SqlAgent, shop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shop.startswith("postgresql"):
        probe = "SELECT current_setting('transaction_read_only') AS ro"
        expected: Any = "on"
    else:
        probe = "SELECT query_only AS ro FROM pragma_query_only"
        expected = 1
    assert (await query(sql, probe))["rows"] == [[expected]]

    monkeypatch.setattr(sql_module, "check_select", lambda statement, dialect: statement)
    for statement in ("DELETE FROM items", "CREATE TABLE t2 (a INTEGER)"):
        with pytest.raises(AgentError) as err:
            await sql.run(Ctx(), "sql.query", {"connection": "shop", "query": statement})
        assert err.value.reason == "SQL_NOT_ALLOWED", err.value
    monkeypatch.undo()
    assert (await query(sql, "SELECT COUNT(*) AS n FROM items"))["rows"] == [[5]]


async def test_sql_row_limit_caps_requests_and_says_truncated(sql: SqlAgent) -> None:
    everything = await query(sql, "SELECT id FROM items ORDER BY id")
    assert everything["rows"] == [[1], [2], [3]] and everything["truncated"] is True
    two = await query(sql, "SELECT id FROM items ORDER BY id", limit=2)
    assert two["row_count"] == 2 and two["truncated"] is True
    capped = await query(sql, "SELECT id FROM items ORDER BY id", limit=100)
    assert capped["row_count"] == 3 and capped["truncated"] is True
    exact = await query(sql, "SELECT id FROM items WHERE id > :id ORDER BY id", params={"id": 2})
    assert exact["row_count"] == 3 and exact["truncated"] is False


async def test_sql_errors_have_stable_reasons(sql: SqlAgent) -> None:
    cases = [
        ({"connection": "nope", "query": "SELECT 1"}, "UNKNOWN_CONNECTION"),
        ({"connection": "shop", "query": "SELECT nosuchcolumn FROM items"}, "SQL_ERROR"),
        ({"connection": "shop", "query": "SELECT FROM WHERE"}, "SQL_ERROR"),
        ({"connection": "shop", "query": "SELECT :missing AS v"}, "SQL_ERROR"),
        ({"connection": "shop", "query": "SELECT 1", "limit": 0}, "INVALID_INPUT"),
    ]
    for payload, reason in cases:
        with pytest.raises(AgentError) as err:
            await sql.run(Ctx(), "sql.query", payload)
        assert (err.value.reason, err.value.retryable) == (reason, False), payload


async def test_sql_query_is_stopped_at_the_deadline(sql: SqlAgent, shop: str) -> None:
    if shop.startswith("postgresql"):
        slow = "SELECT pg_sleep(5) AS s"
    else:
        slow = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1e9) "
            "SELECT COUNT(*) AS n FROM c"
        )
    started = time.monotonic()
    with pytest.raises(AgentError) as err:
        await sql.run(Ctx(timeout=0.3), "sql.query", {"connection": "shop", "query": slow})
    assert err.value.reason == "SQL_TIMEOUT"
    assert time.monotonic() - started < 2.0
    assert (await query(sql, "SELECT COUNT(*) AS n FROM items"))["rows"] == [[5]]


async def test_sql_unreachable_database_is_retryable() -> None:
    url = f"postgresql://nobody@127.0.0.1:{closed_port()}/none"
    agent = SqlAgent({"connections": {"down": url}, "connect_timeout": 2})
    try:
        with pytest.raises(AgentError) as err:
            await agent.run(Ctx(), "sql.query", {"connection": "down", "query": "SELECT 1"})
        assert err.value.reason == "SQL_UNAVAILABLE" and err.value.retryable
    finally:
        await agent.close()


async def test_sql_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    agent = SqlAgent({"connections": {"gone": f"sqlite:///{path}"}})
    with pytest.raises(AgentError) as err:
        await agent.run(Ctx(), "sql.query", {"connection": "gone", "query": "SELECT 1"})
    assert err.value.reason == "SQL_UNAVAILABLE"
    assert not path.exists()
    await agent.close()


def test_sql_config_is_checked_up_front() -> None:
    with pytest.raises(ConfigError) as err:
        SqlAgent({"connections": {"m": "mysql://x/y"}, "row_limit": 0})
    assert len(err.value.problems) == 2


# -------------------------------------------------------------------- http


class Upstream:
    """A local HTTP server whose routes misbehave on request."""

    def __init__(self) -> None:
        self.hits: list[tuple[float, str, str]] = []
        self.failures = 0  # how many /api/flaky requests fail before one succeeds
        self.base = ""
        app = web.Application()
        app.router.add_route("*", "/api/echo", self.echo)
        app.router.add_route("*", "/api/flaky", self.flaky)
        app.router.add_route("*", "/api/missing", self.missing)
        app.router.add_route("*", "/api/down", self.down)
        app.router.add_route("*", "/api/slow", self.slow)
        app.router.add_route("*", "/api/limited", self.limited)
        app.router.add_route("*", "/api/text", self.text)
        app.router.add_route("*", "/api/redirect", self.redirect)
        app.router.add_route("*", "/{tail:.*}", self.elsewhere)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.base = f"http://{host}:{port}/api"

    def paths(self) -> list[str]:
        return [path for _, _, path in self.hits]

    async def _hit(self, request: web.Request) -> None:
        self.hits.append((time.monotonic(), request.method, request.path))

    async def echo(self, request: web.Request) -> web.Response:
        await self._hit(request)
        body = await request.json() if request.can_read_body else None
        return web.json_response(
            {
                "method": request.method,
                "path": request.path,
                "query": {k: request.query.getall(k) for k in request.query},
                "authorization": request.headers.get("Authorization"),
                "custom": request.headers.get("X-Custom"),
                "body": body,
            },
            headers={"X-Request-Id": "r-1", "Server-Secret": "hidden"},
        )

    async def flaky(self, request: web.Request) -> web.Response:
        await self._hit(request)
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=503, text="try later")
        return web.json_response({"ok": True})

    async def missing(self, request: web.Request) -> web.Response:
        await self._hit(request)
        return web.Response(status=404, text="no such thing")

    async def down(self, request: web.Request) -> web.Response:
        await self._hit(request)
        return web.Response(status=500, text="broken")

    async def slow(self, request: web.Request) -> web.Response:
        await self._hit(request)
        await asyncio.sleep(3)
        return web.json_response({"late": True})

    async def limited(self, request: web.Request) -> web.Response:
        await self._hit(request)
        if len([p for p in self.paths() if p == "/api/limited"]) == 1:
            return web.Response(status=429, headers={"Retry-After": "120"})
        return web.json_response({"ok": True})

    async def text(self, request: web.Request) -> web.Response:
        await self._hit(request)
        return web.Response(text="x" * 200_000)

    async def redirect(self, request: web.Request) -> web.Response:
        await self._hit(request)
        raise web.HTTPFound("http://elsewhere.invalid/steal")

    async def elsewhere(self, request: web.Request) -> web.Response:
        await self._hit(request)
        return web.Response(status=200, text="outside the API")


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    try:
        yield server
    finally:
        await server.runner.cleanup()


@pytest.fixture
async def make_http() -> AsyncIterator[Callable[..., HttpAgent]]:
    agents: list[HttpAgent] = []

    def make(base_url: str, *, top: Mapping[str, Any] | None = None, **api: Any) -> HttpAgent:
        table = {
            "base_url": base_url,
            "headers": {"Authorization": "Bearer from-config"},
            "timeout": 2.0,
            "rate": 1000,
            "burst": 1000,
            "max_attempts": 3,
            **api,
        }
        agent = HttpAgent({"apis": {"up": table}, **(top or {})})
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.close()


async def request(agent: HttpAgent, path: str, ctx: Ctx | None = None, **extra: Any) -> Any:
    return await agent.run(ctx or Ctx(), "http.request", {"api": "up", "path": path, **extra})


async def test_http_sends_config_auth_and_request_parts(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base)
    result = await request(
        agent,
        "echo",
        query={"q": "a b", "n": [1, 2], "flag": True},
        headers={"authorization": "Bearer from-caller", "X-Custom": "yes"},
    )
    json.dumps(result)
    assert result["status"] == 200 and result["text"] is None
    body = result["json"]
    assert body["path"] == "/api/echo" and body["method"] == "GET"
    assert body["query"] == {"q": ["a b"], "n": ["1", "2"], "flag": ["true"]}
    assert body["authorization"] == "Bearer from-config"  # not overridable
    assert body["custom"] == "yes"
    assert result["headers"]["x-request-id"] == "r-1"
    assert "server-secret" not in result["headers"]

    posted = await request(agent, "/echo", method="POST", json={"a": [1, None]})
    assert posted["json"]["method"] == "POST" and posted["json"]["body"] == {"a": [1, None]}


async def test_http_retries_503_then_succeeds(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    upstream.failures = 2
    result = await request(make_http(upstream.base), "flaky")
    assert result["json"] == {"ok": True}
    assert upstream.paths() == ["/api/flaky"] * 3


async def test_http_does_not_repeat_a_post_that_may_have_been_applied(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    upstream.failures = 1
    with pytest.raises(AgentError) as err:
        await request(make_http(upstream.base), "flaky", method="POST", json={})
    assert err.value.reason == "HTTP_503" and err.value.retryable
    assert upstream.paths() == ["/api/flaky"]


async def test_http_404_fails_at_once(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    with pytest.raises(AgentError) as err:
        await request(make_http(upstream.base), "missing")
    assert err.value.reason == "HTTP_404" and not err.value.retryable
    assert "no such thing" in str(err.value)
    assert upstream.paths() == ["/api/missing"]


async def test_http_circuit_opens_and_then_fails_fast(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, max_attempts=2, failure_threshold=2, recovery_time=30)
    with pytest.raises(AgentError) as first:
        await request(agent, "down")
    assert first.value.reason == "HTTP_500" and first.value.retryable
    assert len(upstream.hits) == 2

    started = time.monotonic()
    with pytest.raises(AgentError) as second:
        await request(agent, "echo")
    assert second.value.reason == "CIRCUIT_OPEN" and second.value.retryable
    assert time.monotonic() - started < 0.1
    assert len(upstream.hits) == 2  # nothing sent


async def test_http_rate_limit_spaces_requests(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, rate=5, burst=1)
    for _ in range(3):
        await request(agent, "echo")
    times = [t for t, _, _ in upstream.hits]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 2 and all(gap >= 0.15 for gap in gaps), gaps


async def test_http_rate_limit_refuses_when_no_token_comes_in_time(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, rate=0.5, burst=1)
    await request(agent, "echo")
    with pytest.raises(AgentError) as err:
        await request(agent, "echo", ctx=Ctx(timeout=0.5))
    assert err.value.reason == "RATE_LIMITED" and err.value.retryable
    assert len(upstream.hits) == 1


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "echo/../../secret",
        "%2e%2e/secret",
        "%2E%2E%2Fsecret",
        "http://127.0.0.1/secret",
        "//127.0.0.1/secret",
        "file:///etc/passwd",
        "echo?x=1",
        "echo\\..\\..\\secret",
    ],
)
async def test_http_paths_cannot_leave_the_base_url(
    upstream: Upstream, make_http: Callable[..., HttpAgent], path: str
) -> None:
    with pytest.raises(AgentError) as err:
        await request(make_http(upstream.base), path)
    assert err.value.reason == "URL_NOT_ALLOWED"
    assert upstream.hits == []


async def test_http_does_not_follow_redirects(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    result = await request(make_http(upstream.base), "redirect")
    assert result["status"] == 302
    assert result["headers"]["location"] == "http://elsewhere.invalid/steal"
    assert upstream.paths() == ["/api/redirect"]


async def test_http_retry_after_is_honoured_up_to_a_cap(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, max_retry_after=0.3)
    started = time.monotonic()
    result = await request(agent, "limited")
    elapsed = time.monotonic() - started
    assert result["json"] == {"ok": True}
    assert 0.25 <= elapsed < 2.0, elapsed


async def test_http_post_is_repeated_after_429(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, max_retry_after=0.05)
    result = await request(agent, "limited", method="POST", json=None)
    assert result["json"] == {"ok": True}
    assert [method for _, method, _ in upstream.hits] == ["POST", "POST"]


async def test_http_attempt_timeout_and_task_deadline(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, timeout=0.2, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(AgentError) as err:
        await request(agent, "slow")
    assert err.value.reason == "HTTP_TIMEOUT" and err.value.retryable
    assert len(upstream.hits) == 2 and time.monotonic() - started < 1.5

    patient = make_http(upstream.base, timeout=10)
    started = time.monotonic()
    with pytest.raises(AgentError) as err:
        await request(patient, "slow", ctx=Ctx(timeout=0.3))
    assert err.value.reason == "HTTP_TIMEOUT"
    assert time.monotonic() - started < 1.0


async def test_http_text_bodies_are_bounded(
    upstream: Upstream, make_http: Callable[..., HttpAgent]
) -> None:
    agent = make_http(upstream.base, top={"max_text_chars": 1000})
    result = await request(agent, "text")
    assert result["json"] is None and result["text"] == "x" * 1000
    assert result["truncated"] is True


async def test_http_unreachable_api_is_retryable(make_http: Callable[..., HttpAgent]) -> None:
    agent = make_http(f"http://127.0.0.1:{closed_port()}/api", max_attempts=2)
    with pytest.raises(AgentError) as err:
        await request(agent, "echo")
    assert err.value.reason == "HTTP_UNAVAILABLE" and err.value.retryable


async def test_http_input_errors(upstream: Upstream, make_http: Callable[..., HttpAgent]) -> None:
    agent = make_http(upstream.base)
    with pytest.raises(AgentError) as err:
        await request(agent, "echo", headers={"Host": "evil.example"})
    assert err.value.reason == "HEADER_NOT_ALLOWED"
    with pytest.raises(AgentError) as err:
        await agent.run(Ctx(), "http.request", {"api": "nope", "path": "echo"})
    assert err.value.reason == "UNKNOWN_API"
    assert upstream.hits == []
    with pytest.raises(ConfigError):
        HttpAgent({"apis": {"bad": {"base_url": "ftp://x"}}})


# ----------------------------------------------------------------- profile

CSV = """id,name,price,active,joined,note
1,apple,1.5,true,2024-01-02,
2,banana,0.25,false,2024-02-03,x
3,apple,3,true,,NULL
4,cherry,,TRUE,2024-03-04,y
"""


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "items.csv").write_text(CSV)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n1\n")
    return root


def by_name(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["columns"]}


async def test_profile_csv(roots: Path) -> None:
    agent = ProfileAgent({"roots": [str(roots)], "progress_every": 2})
    ctx = Ctx()
    result = await agent.run(ctx, "profile.file", {"path": "items.csv"})
    json.dumps(result)
    assert result["rows"] == 4 and result["source"]["format"] == "csv"
    cols = by_name(result)
    assert list(cols) == ["id", "name", "price", "active", "joined", "note"]
    assert cols["id"] | {"top": None, "types": None} == {
        "name": "id",
        "type": "integer",
        "types": None,
        "count": 4,
        "nulls": 0,
        "distinct": 4,
        "distinct_capped": False,
        "min": 1,
        "max": 4,
        "mean": 2.5,
        "top": None,
    }
    assert cols["name"]["type"] == "text" and cols["name"]["distinct"] == 3
    assert cols["name"]["top"][0] == {"value": "apple", "count": 2}
    assert (cols["name"]["min"], cols["name"]["max"]) == ("apple", "cherry")
    price = cols["price"]
    assert price["type"] == "real" and price["types"] == {"real": 2, "integer": 1}
    assert (price["count"], price["nulls"]) == (3, 1)
    assert math.isclose(price["mean"], (1.5 + 0.25 + 3) / 3)
    assert (price["min"], price["max"]) == (0.25, 3)
    assert cols["active"]["type"] == "boolean"
    assert cols["active"]["top"] == [{"value": True, "count": 3}, {"value": False, "count": 1}]
    assert cols["joined"]["type"] == "date" and cols["joined"]["nulls"] == 1
    assert cols["joined"]["min"] == "2024-01-02" and cols["joined"]["mean"] is None
    assert (cols["note"]["count"], cols["note"]["nulls"]) == (2, 2)

    percents = [p for p, _ in ctx.reports]
    assert len(percents) >= 3 and percents == sorted(percents) and percents[-1] == 100.0


async def test_profile_csv_selected_columns(roots: Path) -> None:
    agent = ProfileAgent({"roots": [str(roots)]})
    result = await agent.run(Ctx(), "profile.file", {"path": "items.csv", "columns": ["price"]})
    assert [c["name"] for c in result["columns"]] == ["price"]
    with pytest.raises(AgentError) as err:
        await agent.run(Ctx(), "profile.file", {"path": "items.csv", "columns": ["nope"]})
    assert err.value.reason == "UNKNOWN_COLUMN"


async def test_profile_jsonl(roots: Path) -> None:
    lines = [
        json.dumps({"id": 1, "tags": ["a"], "score": 0.5, "when": "2024-01-02T03:04:05Z"}),
        "",
        json.dumps({"id": 2, "score": None, "extra": "new"}),
        "not json",
        json.dumps([1, 2]),
        json.dumps({"id": "3", "score": 1, "tags": ["a"]}),
    ]
    (roots / "events.jsonl").write_text("\n".join(lines) + "\n")
    agent = ProfileAgent({"roots": [str(roots)]})
    result = await agent.run(Ctx(), "profile.file", {"path": str(roots / "events.jsonl")})
    json.dumps(result)
    assert result["rows"] == 3 and result["skipped_lines"] == 2
    cols = by_name(result)
    assert cols["id"]["type"] == "mixed" and cols["id"]["types"] == {"integer": 2, "text": 1}
    assert cols["score"]["type"] == "real" and cols["score"]["nulls"] == 1
    assert cols["score"]["mean"] == 0.75
    assert cols["tags"]["type"] == "json" and cols["tags"]["top"][0]["count"] == 2
    assert cols["when"]["type"] == "datetime"
    assert (cols["extra"]["count"], cols["extra"]["nulls"]) == (1, 2)


async def test_profile_distinct_count_is_capped(roots: Path) -> None:
    (roots / "many.csv").write_text("v\n" + "".join(f"{i % 10}\n" for i in range(100)))
    agent = ProfileAgent({"roots": [str(roots)], "max_distinct": 3})
    result = await agent.run(Ctx(), "profile.file", {"path": "many.csv"})
    column = result["columns"][0]
    assert column["distinct"] == 3 and column["distinct_capped"] is True
    assert column["count"] == 100 and column["max"] == 9  # other stats stay exact


async def test_profile_large_file_streams_with_progress(roots: Path) -> None:
    rows = 50_000
    with (roots / "big.csv").open("w") as f:
        f.write("n,label\n")
        for i in range(rows):
            f.write(f"{i},label-{i}\n")
    agent = ProfileAgent({"roots": [str(roots)], "max_distinct": 1000})
    ctx = Ctx()
    result = await agent.run(ctx, "profile.file", {"path": "big.csv"})
    assert result["rows"] == rows
    cols = by_name(result)
    assert cols["n"]["mean"] == (rows - 1) / 2 and cols["label"]["distinct_capped"] is True
    assert len(ctx.reports) >= rows // 10_000


async def test_profile_paths_must_stay_under_the_roots(roots: Path, tmp_path: Path) -> None:
    agent = ProfileAgent({"roots": [str(roots)]})
    secret = tmp_path / "outside" / "secret.csv"
    (roots / "link.csv").symlink_to(secret)
    for path in (str(secret), "../outside/secret.csv", "link.csv", "/etc/passwd"):
        with pytest.raises(AgentError) as err:
            await agent.run(Ctx(), "profile.file", {"path": path})
        assert err.value.reason == "PATH_NOT_ALLOWED", path
    with pytest.raises(AgentError) as err:
        await agent.run(Ctx(), "profile.file", {"path": "absent.csv"})
    assert err.value.reason == "FILE_NOT_FOUND"
    with pytest.raises(AgentError) as err:
        await ProfileAgent({}).run(Ctx(), "profile.file", {"path": "items.csv"})
    assert err.value.reason == "PATH_NOT_ALLOWED"


async def test_profile_rows_and_records() -> None:
    agent = ProfileAgent({})
    records = await agent.run(
        Ctx(), "profile.rows", {"records": [{"a": 1, "b": "x"}, {"a": 2}, {"a": None, "b": "x"}]}
    )
    cols = by_name(records)
    assert records["rows"] == 3 and cols["a"]["mean"] == 1.5 and cols["b"]["nulls"] == 1
    with pytest.raises(AgentError) as err:
        await agent.run(Ctx(), "profile.rows", {"columns": ["a", "b"], "rows": [[1]]})
    assert err.value.reason == "INVALID_INPUT"


async def test_profile_of_a_sql_result_through_ctx_call(sql: SqlAgent) -> None:
    profile = ProfileAgent({})
    ctx = Ctx(agents={"sql.query": sql, "profile.rows": profile})
    rows = await ctx.call(
        "sql.query", {"connection": "shop", "query": "SELECT name, price FROM items ORDER BY id"}
    )
    result = await ctx.call("profile.rows", rows)
    cols = by_name(result)
    assert result["rows"] == 3  # the sql agent's row limit
    assert cols["price"]["type"] == "real" and cols["price"]["max"] == 3.0
    assert cols["name"]["type"] == "text" and cols["name"]["distinct"] == 3
