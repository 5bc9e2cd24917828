"""Builds sources and destinations from spec parts and the ``pipelines``
settings, and answers the config-dependent checks (data roots, connection
and API names) for validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from datamcp.adapters.http_agent import ApiConfig, _api_config
from datamcp.adapters.pipelines.csv import CsvDestination, CsvSource
from datamcp.adapters.pipelines.files import PathRefused, confine
from datamcp.adapters.pipelines.http import HttpSource, make_guard
from datamcp.adapters.pipelines.jsonl import JsonlDestination, JsonlSource
from datamcp.adapters.pipelines.s3 import S3Destination, S3Settings, S3Source
from datamcp.adapters.pipelines.sql import SqlSource
from datamcp.adapters.pipelines.sqlite_table import SqliteTableDestination
from datamcp.adapters.pipelines.table import SqlAlchemyTableDestination
from datamcp.core.errors import ConfigError, FieldViolation
from datamcp.core.events.bus import EventBus
from datamcp.core.pipelines.event_source import EventSource
from datamcp.core.pipelines.ports import Destination, PermanentError, ReadContext, Source
from datamcp.core.pipelines.spec import Part, PipelineSpec
from datamcp.core.resilience import CallGuard


class PipelineConnectors:
    """The :class:`~datamcp.core.pipelines.ports.Connectors` of this build.

    Args:
        data_roots: directories file sources and destinations are confined to.
        sql_connections: connection name -> SQLAlchemy URL.
        http_apis: API name -> {base_url, headers, timeout, rate, ...} (as the
            http agent's ``apis``).
        bus: the event bus, for ``events`` sources (None: not available).
        http_budget: seconds one page request may take, retries included.

    Raises:
        ConfigError: an API entry is invalid.
    """

    def __init__(
        self,
        *,
        data_roots: Sequence[Path] = (),
        sql_connections: Mapping[str, str] | None = None,
        http_apis: Mapping[str, Any] | None = None,
        bus: EventBus | None = None,
        s3: S3Settings | None = None,
        http_budget: float = 60.0,
    ) -> None:
        self.data_roots = [Path(r) for r in data_roots]
        self.sql_connections = dict(sql_connections or {})
        problems: list[str] = []
        self.apis: dict[str, ApiConfig] = {}
        for name, table in (http_apis or {}).items():
            api = _api_config(str(name), table, problems)
            if api is not None:
                self.apis[api.name] = api
        if problems:
            raise ConfigError([p.replace("http agent", "pipelines.http_apis") for p in problems])
        self.guards: dict[str, CallGuard] = {n: make_guard(a) for n, a in self.apis.items()}
        self.bus = bus
        self.s3 = s3 or S3Settings("us-east-1", None)
        self.http_budget = http_budget

    # ---- checks --------------------------------------------------------------------

    def check(self, spec: PipelineSpec) -> list[FieldViolation]:
        problems: list[FieldViolation] = []
        self._check_source(spec.source, "source", problems)
        for n, t in enumerate(spec.transforms):
            if t.kind == "lookup" and t.options.get("source"):
                kind, options = next(iter(t.options["source"].items()))
                self._check_source(Part(kind, options), f"transforms[{n}].lookup.source", problems)
        d = spec.destination
        path = f"destination.{d.kind}"
        if d.kind in ("csv", "jsonl"):
            try:
                confine(d.options["path"], self.data_roots, must_exist=False)
            except PathRefused as exc:
                problems.append(FieldViolation(f"{path}.path", str(exc)))
        elif d.kind == "table":
            self._check_connection(d.options["connection"], f"{path}.connection", problems)
        return problems

    def _check_source(self, part: Part, path: str, problems: list[FieldViolation]) -> None:
        path = f"{path}.{part.kind}"
        o = part.options
        if part.kind in ("csv", "jsonl"):
            try:
                confine(o["path"], self.data_roots, must_exist=False)
            except PathRefused as exc:
                problems.append(FieldViolation(f"{path}.path", str(exc)))
        elif part.kind == "sql":
            self._check_connection(o["connection"], f"{path}.connection", problems)
        elif part.kind == "http" and o["api"] not in self.apis:
            known = ", ".join(sorted(self.apis)) or "none configured"
            problems.append(
                FieldViolation(
                    f"{path}.api", f"unknown API {o['api']!r} (pipelines.http_apis: {known})"
                )
            )
        elif part.kind == "events" and self.bus is None:
            problems.append(FieldViolation(path, "event sources need the server's event bus"))

    def _check_connection(self, name: str, path: str, problems: list[FieldViolation]) -> None:
        if name not in self.sql_connections:
            known = ", ".join(sorted(self.sql_connections)) or "none configured"
            problems.append(
                FieldViolation(
                    path, f"unknown connection {name!r} (pipelines.sql_connections: {known})"
                )
            )

    # ---- building --------------------------------------------------------------------

    def _file(self, path: str, where: str) -> Path:
        try:
            return confine(path, self.data_roots, must_exist=True)
        except PathRefused as exc:
            raise PermanentError(f"{where}.path: {exc}", "PATH_REFUSED") from None

    def _url(self, name: str, where: str) -> str:
        url = self.sql_connections.get(name)
        if url is None:
            raise PermanentError(
                f"{where}.connection: unknown connection {name!r}", "INVALID_PIPELINE"
            )
        return url

    def source(self, part: Part, ctx: ReadContext, path: str = "source") -> Source:
        o = dict(part.options)
        where = f"{path}.{part.kind}"
        if part.kind == "csv":
            return CsvSource(
                self._file(o["path"], where),
                delimiter=o["delimiter"],
                quote=o.get("quote", '"'),
                escape=o.get("escape", ""),
                null_values=o.get("null_values", []),
                encoding=o.get("encoding", "utf-8"),
                no_header=o["no_header"],
                columns=o["columns"],
                display=o["path"],
            )
        if part.kind == "jsonl":
            return JsonlSource(
                self._file(o["path"], where),
                columns=o["columns"],
                encoding=o.get("encoding", "utf-8"),
                display=o["path"],
            )
        if part.kind == "sql":
            params = {**ctx.params, **o["params"]}
            if ctx.cursor_column:
                params.setdefault("cursor", ctx.cursor)
            return SqlSource(self._url(o["connection"], where), o["query"], params, display=where)
        if part.kind == "http":
            api = self.apis.get(o["api"])
            if api is None:
                raise PermanentError(f"{where}.api: unknown API {o['api']!r}", "INVALID_PIPELINE")
            return HttpSource(api, self.guards[api.name], o, budget=self.http_budget, display=where)
        if part.kind == "s3":
            return S3Source(self.s3, o)
        if part.kind == "events":
            if self.bus is None:
                raise PermanentError(f"{where}: no event bus here", "INVALID_PIPELINE")
            return EventSource(self.bus, o, ctx)
        raise PermanentError(f"{where}: unknown source kind", "INVALID_PIPELINE")

    def destination(self, part: Part, run_id: str) -> Destination:
        o = dict(part.options)
        where = f"destination.{part.kind}"
        if part.kind == "table":
            url = self._url(o["connection"], where)
            kw: dict[str, Any] = {
                "mode": o["mode"],
                "keys": o["keys"],
                "contract": o["contract"],
                "run_id": run_id,
            }
            u = make_url(url)
            if u.get_backend_name() == "sqlite":
                if not u.database or u.database == ":memory:":
                    raise PermanentError(
                        f"{where}: an in-memory SQLite database cannot be a destination",
                        "INVALID_PIPELINE",
                    )
                return SqliteTableDestination(u.database, o["table"], **kw)
            return SqlAlchemyTableDestination(url, o["table"], **kw)
        if part.kind in ("csv", "jsonl"):
            try:
                target = confine(o["path"], self.data_roots, must_exist=False)
            except PathRefused as exc:
                raise PermanentError(f"{where}.path: {exc}", "PATH_REFUSED") from None
            if part.kind == "csv":
                return CsvDestination(target, run_id, delimiter=o.get("delimiter", ","))
            return JsonlDestination(target, run_id)
        if part.kind == "s3":
            return S3Destination(self.s3, o, run_id)
        raise PermanentError(f"{where}: unknown destination kind", "INVALID_PIPELINE")
