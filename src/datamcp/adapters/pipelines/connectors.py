"""The ``pipelines`` settings sources and destinations are built with:
data roots, connections, HTTP APIs, the event bus, S3. Each kind's module
(found through ``core.pipelines.kinds``) builds its part and checks its
options against these."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datamcp.adapters.http_api import ApiConfig, api_config
from datamcp.adapters.pipelines.files import confine
from datamcp.adapters.pipelines.http import make_guard
from datamcp.adapters.pipelines.s3 import S3Settings
from datamcp.core.errors import ConfigError, FieldViolation
from datamcp.core.events.bus import EventBus
from datamcp.core.paths import PathRefused
from datamcp.core.pipelines import kinds
from datamcp.core.pipelines.model import Part, PipelineSpec
from datamcp.core.pipelines.ports import Destination, PermanentError, ReadContext, Source
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
            api = api_config(str(name), table, problems)
            if api is not None:
                self.apis[api.name] = api
        if problems:
            raise ConfigError([p.replace("http agent", "pipelines.http_apis") for p in problems])
        self.guards: dict[str, CallGuard] = {n: make_guard(a) for n, a in self.apis.items()}
        self.bus = bus
        self.s3 = s3 or S3Settings("us-east-1", None)
        self.http_budget = http_budget

    # ---- checks ---------------------------------------------------------------------

    def check(self, spec: PipelineSpec) -> list[FieldViolation]:
        problems: list[FieldViolation] = []
        parts = [(spec.source, "source", kinds.SOURCES, "check_source")]
        for n, t in enumerate(spec.transforms):
            if t.kind == "lookup" and t.options.get("source"):
                kind, options = next(iter(t.options["source"].items()))
                where = f"transforms[{n}].lookup.source"
                parts.append((Part(kind, options), where, kinds.SOURCES, "check_source"))
        parts.append((spec.destination, "destination", kinds.DESTINATIONS, "check_destination"))
        for part, where, registry, check in parts:
            fn = getattr(registry[part.kind], check, None)
            if fn is not None:
                fn(self, part.options, f"{where}.{part.kind}", problems)
        return problems

    def check_path(self, path: str, where: str, problems: list[FieldViolation]) -> None:
        try:
            confine(path, self.data_roots, must_exist=False)
        except PathRefused as exc:
            problems.append(FieldViolation(where, str(exc)))

    def check_connection(self, name: str, where: str, problems: list[FieldViolation]) -> None:
        if name not in self.sql_connections:
            known = ", ".join(sorted(self.sql_connections)) or "none configured"
            problems.append(
                FieldViolation(
                    where, f"unknown connection {name!r} (pipelines.sql_connections: {known})"
                )
            )

    # ---- building --------------------------------------------------------------------

    def file(self, path: str, where: str) -> Path:
        """An existing file under the data roots, for a source."""
        try:
            return confine(path, self.data_roots, must_exist=True)
        except PathRefused as exc:
            raise PermanentError(f"{where}.path: {exc}", "PATH_REFUSED") from None

    def target(self, path: str, where: str) -> Path:
        """A file to write under the data roots, for a destination."""
        try:
            return confine(path, self.data_roots, must_exist=False)
        except PathRefused as exc:
            raise PermanentError(f"{where}.path: {exc}", "PATH_REFUSED") from None

    def url(self, name: str, where: str) -> str:
        url = self.sql_connections.get(name)
        if url is None:
            raise PermanentError(
                f"{where}.connection: unknown connection {name!r}", "INVALID_PIPELINE"
            )
        return url

    def source(self, part: Part, ctx: ReadContext, path: str = "source") -> Source:
        kind = kinds.SOURCES.get(part.kind)
        where = f"{path}.{part.kind}"
        if kind is None:
            raise PermanentError(f"{where}: unknown source kind", "INVALID_PIPELINE")
        return kind.source(self, part.options, ctx, where)  # type: ignore[no-any-return]

    def destination(self, part: Part, run_id: str) -> Destination:
        kind = kinds.DESTINATIONS.get(part.kind)
        where = f"destination.{part.kind}"
        if kind is None:
            raise PermanentError(f"{where}: unknown destination kind", "INVALID_PIPELINE")
        return kind.destination(self, part.options, run_id, where)  # type: ignore[no-any-return]
