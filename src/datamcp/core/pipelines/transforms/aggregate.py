"""``aggregate: {group_by, aggregations: [{output, op, column}]}``: one row
per group (in the order groups are first seen) with count, sum, avg, min or
max. A barrier: DuckDB aggregates out of core past the memory limit. A
non-number under sum or avg rejects its row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker

if TYPE_CHECKING:  # the engine is imported when a plan is built, not with the spec
    from datamcp.core.pipelines.exprc import Expr
    from datamcp.core.pipelines.plan import PlanBuilder, Rel


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


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:  # noqa: PLR0915
    """Each chunk is aggregated on its own (partials: counts, sums, min,
    max, first row), the partials are merged at the end: memory holds one
    partial row per group and chunk, not the rows."""
    from duckdb import sqltypes as T

    from datamcp.core.pipelines.exprc import NUMERIC, C, F, K, notnull, when
    from datamcp.core.pipelines.plan import RID, N

    L = b.layout
    group = b.need(o["group_by"], f"{path}.group_by")
    errors: list[tuple[Expr, Expr]] = []
    partials: list[Expr] = []  # per chunk
    finals: list[tuple[str, Expr, str]] = []  # (output, merge of partials, kind)
    for n, a in enumerate(o["aggregations"]):
        op, col, name = a["op"], a["column"], a["output"]
        p1, p2 = b.new_phys(), b.new_phys()
        if not col:
            partials.append(F("count_star").alias(p1))
            finals.append((name, F("sum", C(p1)).try_cast(T.BIGINT), "integer"))
            continue
        found = b.need([col], f"{path}.aggregations[{n}].column")
        if not found:
            continue
        e, kind = C(found[0]), L.kinds[col]
        if op in ("sum", "avg") and kind not in NUMERIC - {"boolean"}:
            why = F(
                "concat", K(f"aggregate: {op}({col}): '"), e.cast(T.VARCHAR), K("' is not a number")
            )
            errors.append((notnull(e), why))
        number = e.try_cast(T.DOUBLE if kind == "float" or op == "avg" else T.BIGINT)
        if op == "count":
            partials.append(F("count", e).alias(p1))
            finals.append((name, F("sum", C(p1)).try_cast(T.BIGINT), "integer"))
        elif op == "sum":
            out = T.DOUBLE if kind == "float" else T.BIGINT
            partials.append(F("sum", number).alias(p1))
            finals.append(
                (name, F("sum", C(p1)).try_cast(out), "float" if kind == "float" else "integer")
            )
        elif op == "avg":
            partials += [F("sum", number).alias(p1), F("count", number).alias(p2)]
            total, count = F("sum", C(p1)), F("sum", C(p2))
            finals.append(
                (name, total / when(count == K(0), K(None), count).cast(T.DOUBLE), "float")
            )
        else:
            partials.append(F(op, e).alias(p1))
            finals.append((name, F(op, C(p1)), kind))
    shared = b.stage(path, errors=errors).counters if errors else None
    group_names = [c for c in o["group_by"] if c in L.phys]
    needed = sorted(
        {*group, *(L.phys[a["column"]] for a in o["aggregations"] if a["column"] in L.phys)}
    )
    barrier = b.barrier(path, [*needed, RID], shared)
    first = b.new_phys()
    keys = ", ".join(group)  # our own physical column names (never caller text)
    exprs = [C(g) for g in group]

    def partial(rel: Rel) -> Rel:
        return rel.aggregate([*exprs, *partials, F("min", C(RID)).alias(first)], group_expr=keys)

    def grouped(rel: Rel, extra: Sequence[str]) -> Rel:
        more = [C(x) for x in extra]
        count = F("count_star").alias(N)
        return rel.aggregate(
            [*exprs, *more, *partials, F("min", C(RID)).alias(first), count],
            group_expr=", ".join([*group, *extra]),
        )

    new_phys = {name: b.new_phys() for name, _e, _k in finals}

    def result(rel: Rel) -> Rel:
        merged = [e.alias(new_phys[name]) for name, e, _k in finals]
        grouped = rel.aggregate([*exprs, *merged, F("min", C(first)).alias(first)], group_expr=keys)
        ordered = grouped.sort(C(first).asc())
        return ordered.select(*exprs, *[C(new_phys[n]) for n, _e, _k in finals])

    barrier.partial = partial
    if group:  # (without keys, no rows alive must still give one row: unfused)
        barrier.grouped = grouped
    barrier.result = result
    kinds = {c: L.kinds[c] for c in group_names}
    phys = {c: L.phys[c] for c in group_names}
    for name, _e, kind in finals:
        kinds[name] = kind
        phys[name] = new_phys[name]
    b.layout.cols = [*group_names, *(n for n, _e, _k in finals)]
    b.layout.phys = phys
    b.layout.kinds = kinds
