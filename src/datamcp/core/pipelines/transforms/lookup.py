"""``lookup: {source, on: {col: lookup_col}, columns, how: left/inner}``:
adds columns from another source, read once per run into a DuckDB table
(the first row of each key wins). ``inner`` drops rows without a match."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.model import Part, PipelineSpec
from datamcp.core.pipelines.ports import Connectors, PermanentError, ReadContext

if TYPE_CHECKING:  # the engine is imported when a plan is built, not with the spec
    import duckdb
    import pyarrow as pa

    from datamcp.core.pipelines.exprc import Expr
    from datamcp.core.pipelines.plan import Layout, PlanBuilder, Rel

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
    import duckdb

    from datamcp.core.pipelines.exprc import C, K
    from datamcp.core.pipelines.plan import RID

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


async def load(
    spec: PipelineSpec,
    ctx: ReadContext,
    con: duckdb.DuckDBPyConnection,
    connectors: Connectors,
    *,
    batch_size: int,
    limit: int,
) -> dict[int, tuple[str, Layout]]:
    """Each lookup transform's source read once per run into a DuckDB table
    (the first row of a key kept), by the transform's index.

    Raises:
        PermanentError: reason ``LOOKUP_TOO_LARGE`` past ``limit`` rows.
    """
    import pyarrow as pa

    from datamcp.core.pipelines.frame import kind_of
    from datamcp.core.pipelines.plan import Layout

    out: dict[int, tuple[str, Layout]] = {}
    plain = ReadContext(ctx.tenant, ctx.params)
    for n, part in enumerate(spec.transforms):
        if part.kind != "lookup":
            continue
        kind, options = next(iter(part.options["source"].items()))
        where = f"transforms[{n}].lookup.source"
        source = connectors.source(Part(kind, options), plain, where)
        table = f"__lookup{n}"
        try:
            columns = await source.open()
            phys = {c: f"_L{n}_{i}" for i, c in enumerate(columns)}
            kinds = {c: "string" for c in columns}
            count = 0
            while (batch := await source.read(batch_size)) is not None:
                t = batch.table
                if count == 0:
                    kinds = {c: kind_of(t.schema.field(c)) for c in columns}
                renamed = t.select(columns).rename_columns([phys[c] for c in columns])
                await asyncio.to_thread(_store_lookup, con, table, renamed, count, count == 0)
                count += t.num_rows
                if count > limit:
                    raise PermanentError(
                        f"{where}: more than {limit} lookup rows",
                        reason="LOOKUP_TOO_LARGE",
                    )
            if count == 0:
                empty = pa.table({phys[c]: pa.array([], pa.string()) for c in columns})
                await asyncio.to_thread(_store_lookup, con, table, empty, 0, True)
            out[n] = (
                await asyncio.to_thread(_first_per_key, con, table, spec, n, phys),
                Layout(list(columns), phys, kinds),
            )
        finally:
            await source.close()
    return out


def _store_lookup(
    con: duckdb.DuckDBPyConnection, table: str, t: pa.Table, offset: int, first: bool
) -> None:
    import pyarrow as pa

    t = t.append_column("__lrid", pa.array(range(offset, offset + t.num_rows), pa.int64()))
    rel = con.from_arrow(t)
    if first:
        rel.create(table)
    else:
        rel.insert_into(table)


def _first_per_key(
    con: duckdb.DuckDBPyConnection, table: str, spec: PipelineSpec, n: int, phys: dict[str, str]
) -> str:
    """A view of the lookup table with one row per key (the first)."""
    from duckdb import FunctionExpression, StarExpression

    from datamcp.core.pipelines.exprc import C, K

    on = [phys[c] for c in spec.transforms[n].options["on"].values() if c in phys]
    if not on:
        return table
    rn = FunctionExpression("row_number").over(
        partition_by=[C(c) for c in on], order_by=[C("__lrid")]
    )
    first = f"{table}_first"
    con.table(table).select(StarExpression(), rn.alias("__n")).filter(C("__n") == K(1)).select(
        StarExpression(exclude=["__n"])
    ).create(first)
    return first
