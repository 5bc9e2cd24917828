"""``select: [col, ...]``: keeps these columns, in this order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker

if TYPE_CHECKING:  # the engine is imported when a plan is built
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "select"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, list):
        o = {"columns": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("columns",))
    return {"columns": c.names(m.get("columns"), f"{path}.columns", required=True)}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    b.need(o["columns"], f"{path}.columns")
    keep = [c for c in o["columns"] if c in b.layout.phys]
    b.stage(path)
    b.layout.cols = keep
