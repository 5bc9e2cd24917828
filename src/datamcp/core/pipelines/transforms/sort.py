"""``sort: [col, -col]``: orders the rows (nulls last, ties in input order).
A barrier: DuckDB sorts out of core past the memory limit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker

if TYPE_CHECKING:  # the engine is imported when a plan is built
    from datamcp.core.pipelines.plan import PlanBuilder, Rel

KIND = "sort"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, list):
        o = {"keys": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("keys",))
    raw = m.get("keys")
    keys: list[dict[str, Any]] = []
    if not isinstance(raw, list) or not raw:
        c.fail(f"{path}.keys", "required: a list of columns ('-col' for descending)")
        raw = []
    for i, item in enumerate(raw):
        if isinstance(item, str) and item.strip("-"):
            keys.append({"column": item.lstrip("-"), "descending": item.startswith("-")})
        elif isinstance(item, Mapping) and isinstance(item.get("column"), str) and item["column"]:
            keys.append({"column": item["column"], "descending": bool(item.get("descending"))})
        else:
            c.fail(f"{path}.keys[{i}]", "expected 'col', '-col' or {column, descending}")
    return {"keys": keys}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    from datamcp.core.pipelines.exprc import C
    from datamcp.core.pipelines.plan import RID

    order = []
    for n, key in enumerate(o["keys"]):
        found = b.need([key["column"]], f"{path}.keys[{n}].column")
        if found:
            e = C(found[0])
            order.append(e.desc().nulls_last() if key["descending"] else e.asc().nulls_last())
    keep = [b.layout.phys[c] for c in b.layout.cols]
    barrier = b.barrier(path, [*keep, RID])

    def result(rel: Rel) -> Rel:
        return rel.sort(*order, C(RID).asc())

    barrier.result = result
