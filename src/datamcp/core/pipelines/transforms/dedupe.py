"""``dedupe: [keys]``: the first row of each key wins (all columns when no
keys). Streaming: each batch is checked against the keys kept so far in a
DuckDB table (which spills to disk past the memory limit), so memory does
not grow with the input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker

if TYPE_CHECKING:  # the engine is imported when a plan is built, not with the spec
    import pyarrow as pa

    from datamcp.core.pipelines.exprc import Expr
    from datamcp.core.pipelines.plan import PlanBuilder, Rel

KIND = "dedupe"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, list):
        o = {"keys": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("keys",))
    return {"keys": c.names(m.get("keys"), f"{path}.keys")}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    keys = list(o["keys"]) or list(b.layout.cols)
    if b.need(keys, f"{path}.keys"):
        seen_stage(b, path, [keys], reject=False)


def seen_stage(
    b: PlanBuilder,
    path: str,
    keysets: Sequence[Sequence[str]],
    *,
    reject: bool,
    errors: Sequence[tuple[Expr, Expr]] = (),
) -> None:
    """A stage that drops (dedupe) or rejects (``validate.unique``) a row
    whose key was seen before in the run; ``errors`` are other rules checked
    first."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from datamcp.core.pipelines.exprc import C, F, K, Typed, notnull
    from datamcp.core.pipelines.exprfn import text_of
    from datamcp.core.pipelines.plan import AT, RID

    L = b.layout
    k = len(b.chain.stages)
    parts = []
    for keys in keysets:
        key, rn, seen = b.new_phys(), b.new_phys(), b.new_phys()
        table = f"__seen{b.index}_{key}"
        b.con.from_arrow(pa.table({seen: pa.array([], pa.string())})).create(table)
        cols = [Typed(C(L.phys[n]), L.kinds[n]) for n in keys]
        if reject:
            value: Expr = text_of(cols[0])
            present = notnull(cols[0].expr)
        else:
            value = F("to_json", F("list_value", *[text_of(t) for t in cols]))
            present = K(True)
        parts.append((keys, key, rn, seen, table, value, present, cols))

    def prepare(rel: Rel) -> Rel:
        for _keys, key, rn, seen, table, value, _present, _cols in parts:
            alive = C(AT).isnull()
            rel = rel.select(StarExpr(), value.alias(key))
            number = F("row_number").over(partition_by=[C(key), alive], order_by=[C(RID)])
            rel = rel.select(StarExpr(), number.alias(rn))
            rel = rel.join(b.con.table(table), condition=C(key) == C(seen), how="left")
        return rel.sort(C(RID))

    all_errors = list(errors)
    drop: Expr | None = None
    for keys, _key, rn, seen, _table, _value, present, cols in parts:
        again = present & ((C(rn) > K(1)) | notnull(C(seen)))
        if reject:
            name = keys[0]
            shown = (
                text_of(cols[0])
                if cols[0].kind != "string"
                else F("concat", K("'"), cols[0].expr, K("'"))
            )
            reason = F("concat", K(f"unique: {name}="), shown, K(" was seen before"))
            all_errors.append((again, reason))
        else:
            drop = again if drop is None else drop | again
    b.stage(
        path,
        errors=all_errors,
        drop=drop,
        prepare=prepare,
        uses=[L.phys[n] for keys in keysets for n in keys],
    )

    def remember(out: pa.Table) -> None:
        at = out.column(AT)
        passed = pc.or_kleene(pc.is_null(at), pc.greater(at, k))
        for _keys, key, rn, seen, table, _value, _present, _cols in parts:
            new = pc.and_kleene(
                pc.and_kleene(passed, pc.equal(out.column(rn), 1)), pc.is_null(out.column(seen))
            )
            keys_out = out.filter(pc.and_kleene(new, pc.is_valid(out.column(key)))).select([key])
            if keys_out.num_rows:
                b.con.from_arrow(keys_out.rename_columns([seen])).insert_into(table)

    b.chain.after.append(remember)


def StarExpr() -> Expr:
    from duckdb import StarExpression

    return StarExpression()
