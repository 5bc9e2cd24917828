"""``aggregate: {group_by, aggregations: [{output, op, column}]}``: one row
per group (in the order groups are first seen) with count, sum, avg, min or
max. A barrier: DuckDB aggregates out of core past the memory limit. A
non-number under sum or avg rejects its row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import duckdb

from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.exprc import NUMERIC, C, Expr, F, K, notnull
from datamcp.core.pipelines.plan import RID, PlanBuilder, Rel

KIND = "aggregate"
OPS = ("count", "sum", "avg", "min", "max")


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("group_by", "aggregations"))
    group_by = c.names(m.get("group_by"), f"{path}.group_by")
    raw = m.get("aggregations")
    aggs: list[dict[str, str]] = []
    if not isinstance(raw, list) or not raw:
        c.fail(f"{path}.aggregations", "required: a list of {output, op, column}")
        raw = []
    for i, item in enumerate(raw):
        where = f"{path}.aggregations[{i}]"
        a = c.mapping(item, where)
        if a is None:
            continue
        c.unknown(a, where, ("output", "op", "column"))
        op = c.string(a, "op", where, required=True)
        if op and op not in OPS:
            c.fail(f"{where}.op", f"must be one of {', '.join(OPS)}")
        column = c.string(a, "column", where, required=op not in ("count", ""))
        output = c.string(a, "output", where) or (f"{op}_{column}" if column else op)
        aggs.append({"output": output, "op": op, "column": column})
    outputs = group_by + [a["output"] for a in aggs]
    if len(set(outputs)) != len(outputs):
        c.fail(f"{path}.aggregations", "output names must differ from each other and group_by")
    return {"group_by": group_by, "aggregations": aggs}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    L = b.layout
    group = b.need(o["group_by"], f"{path}.group_by")
    errors: list[tuple[Expr, Expr]] = []
    outputs: list[tuple[str, Expr, str]] = []  # (name, aggregate, kind)
    for n, a in enumerate(o["aggregations"]):
        op, col = a["op"], a["column"]
        if not col:
            outputs.append((a["output"], F("count_star"), "integer"))
            continue
        found = b.need([col], f"{path}.aggregations[{n}].column")
        if not found:
            continue
        e, kind = C(found[0]), L.kinds[col]
        if op in ("sum", "avg") and kind not in NUMERIC - {"boolean"}:
            why = F(
                "concat",
                K(f"aggregate: {op}({col}): '"),
                e.cast(duckdb.sqltypes.VARCHAR),
                K("' is not a number"),
            )
            errors.append((notnull(e), why))
        if op == "count":
            outputs.append((a["output"], F("count", e), "integer"))
        elif op == "avg":
            outputs.append((a["output"], F("avg", e.try_cast(duckdb.sqltypes.DOUBLE)), "float"))
        elif op == "sum":
            total = F(
                "sum",
                e.try_cast(duckdb.sqltypes.DOUBLE if kind == "float" else duckdb.sqltypes.BIGINT),
            )
            out_kind = "float" if kind == "float" else "integer"
            outputs.append(
                (
                    a["output"],
                    total.try_cast(
                        duckdb.sqltypes.DOUBLE if out_kind == "float" else duckdb.sqltypes.BIGINT
                    ),
                    out_kind,
                )
            )
        else:
            outputs.append((a["output"], F(op, e), kind))
    shared = b.stage(path, errors=errors).counters if errors else None
    group_names = [c for c in o["group_by"] if c in L.phys]
    needed = sorted(
        {*group, *(L.phys[a["column"]] for a in o["aggregations"] if a["column"] in L.phys)}
    )
    barrier = b.barrier(path, [*needed, RID], shared)
    new_phys = {name: b.new_phys() for name, _e, _k in outputs}

    def result(rel: Rel) -> Rel:
        first = b.new_phys()
        exprs = [C(g) for g in group]
        aggs = [agg.alias(new_phys[name]) for name, agg, _k in outputs]
        # Groups named by our own physical column names (never caller text).
        grouped = rel.aggregate(
            [*exprs, *aggs, F("min", C(RID)).alias(first)], group_expr=", ".join(group)
        )
        ordered = grouped.sort(C(first).asc())
        return ordered.select(*exprs, *[C(new_phys[n]) for n, _e, _k in outputs])

    barrier.result = result
    kinds = {c: L.kinds[c] for c in group_names}
    phys = {c: L.phys[c] for c in group_names}
    for name, _e, kind in outputs:
        kinds[name] = kind
        phys[name] = new_phys[name]
    b.layout.cols = [*group_names, *(n for n, _e, _k in outputs)]
    b.layout.phys = phys
    b.layout.kinds = kinds
