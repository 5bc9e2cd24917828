"""``lookup: {source, on: {col: lookup_col}, columns, how: left/inner}``:
adds columns from another source, read once per run into a DuckDB table
(the first row of each key wins). ``inner`` drops rows without a match."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb

from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.exprc import C, Expr, K
from datamcp.core.pipelines.plan import RID, PlanBuilder, Rel

KIND = "lookup"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("source", "on", "columns", "how"))
    source = c.parse_source(m.get("source"), f"{path}.source")
    on = c.str_map(m.get("on"), f"{path}.on")
    if not on:
        c.fail(f"{path}.on", "required: column: lookup column")
    return {
        "source": source.to_dict() if source else {},
        "on": on,
        "columns": c.names(m.get("columns"), f"{path}.columns"),
        "how": c.choice(m, "how", path, ("left", "inner")),
    }


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    L = b.layout
    loaded = b.lookups.get(b.index)
    b.need(list(o["on"]), f"{path}.on")
    if loaded is None:
        b.fail(f"{path}.source", "lookup rows were not loaded")
        return
    table, lk = loaded
    for name in o["on"].values():
        if name not in lk.phys:
            b.fail(
                f"{path}.on",
                f"unknown lookup column {name!r} (lookup columns: {', '.join(lk.cols)})",
            )
    keys_right = set(o["on"].values())
    wanted = o["columns"] or [c for c in lk.cols if c not in keys_right]
    for name in wanted:
        if name not in lk.phys:
            b.fail(f"{path}.columns", f"unknown lookup column {name!r}")
    clash = [c for c in wanted if c in L.phys]
    if clash:
        b.fail(
            f"{path}.columns", f"{', '.join(clash)} already exist; select other columns or rename"
        )
    if b.problems:
        return
    matched = b.new_phys()
    cond: Expr = K(True)
    for lcol, rname in o["on"].items():
        lt, rt = L.kinds[lcol], lk.kinds[rname]
        le, re_ = C(L.phys[lcol]), C(lk.phys[rname])
        if lt != rt:  # different types match as text
            le, re_ = le.cast(duckdb.sqltypes.VARCHAR), re_.cast(duckdb.sqltypes.VARCHAR)
        cond = cond & (le == re_)
    right = b.con.table(table).select(
        *[C(lk.phys[c]) for c in {*o["on"].values(), *wanted}], K(True).alias(matched)
    )

    def prepare(rel: Rel) -> Rel:
        return rel.join(right, condition=cond, how="left").sort(C(RID))

    drop = C(matched).isnull() if o["how"] == "inner" else None
    b.stage(path, drop=drop, prepare=prepare, uses=[L.phys[c] for c in o["on"]])
    for name in wanted:
        L.cols.append(name)
        L.phys[name] = lk.phys[name]
        L.kinds[name] = lk.kinds[name]
