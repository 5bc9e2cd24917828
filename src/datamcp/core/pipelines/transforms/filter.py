"""``filter: "expr"``: keeps the rows where the expression is true."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker

if TYPE_CHECKING:  # the engine is imported when a plan is built
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "filter"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, str):
        o = {"expr": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("expr",))
    return {"expr": c.expr(m, "expr", path)}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    from datamcp.core.pipelines.exprc import truthy
    from datamcp.core.pipelines.plan import prefixed

    t = b.expression(o["expr"], f"{path}.expr")
    if t is not None:
        b.stage(path, errors=prefixed(t.errors, "filter: "), drop=~truthy(t))
