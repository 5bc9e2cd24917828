"""``derive: {column, expr}``: adds or replaces a column."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker

if TYPE_CHECKING:  # the engine is imported when a plan is built
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "derive"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("column", "expr"))
    return {"column": c.string(m, "column", path, required=True), "expr": c.expr(m, "expr", path)}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    from datamcp.core.pipelines.plan import prefixed

    t = b.expression(o["expr"], f"{path}.expr")
    if t is None:
        return
    target = o["column"]
    phys = b.new_phys()
    b.stage(path, {phys: t.expr}, prefixed(t.errors, f"derive {target}: "))
    if target not in b.layout.phys:
        b.layout.cols.append(target)
    b.layout.phys[target] = phys
    b.layout.kinds[target] = "string" if t.kind in ("null", "list") else t.kind
