"""``validate``: rules a row must meet, or it is rejected with the first
broken rule's reason: ``not_null``, ``schema`` (column of that type),
``range``, ``regex`` (full match), ``in_list``, ``unique`` (a value seen
before in the run)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import TYPES, Checker
from datamcp.core.pipelines.transforms import dedupe

if TYPE_CHECKING:  # the engine is imported when a plan is built, not with the spec
    from datamcp.core.pipelines.exprc import Expr, Typed
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "validate"
RULES = ("not_null", "unique", "range", "regex", "in_list", "schema")


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, RULES)
    out: dict[str, Any] = {
        "not_null": c.names(m.get("not_null"), f"{path}.not_null"),
        "unique": c.names(m.get("unique"), f"{path}.unique"),
        "regex": c.str_map(m.get("regex"), f"{path}.regex"),
        "schema": c.str_map(m.get("schema"), f"{path}.schema", values=TYPES),
    }
    for col, pattern in out["regex"].items():
        problem = regex_problem(pattern)
        if problem:
            c.fail(f"{path}.regex.{col}", f"invalid regular expression: {problem}")
    ranges: dict[str, dict[str, float]] = {}
    for col, bounds in (c.mapping(m.get("range"), f"{path}.range") or {}).items():
        where = f"{path}.range.{col}"
        if not isinstance(bounds, Mapping) or not set(bounds) <= {"min", "max"} or not bounds:
            c.fail(where, "expected {min: number, max: number} (either may be left out)")
            continue
        one: dict[str, float] = {}
        for k, v in bounds.items():
            if isinstance(v, bool) or not isinstance(v, int | float):
                c.fail(f"{where}.{k}", "expected a number")
            else:
                one[k] = v
        if "min" in one and "max" in one and one["min"] > one["max"]:
            c.fail(where, "min is greater than max")
        ranges[str(col)] = one
    out["range"] = ranges
    lists: dict[str, list[Any]] = {}
    for col, values in (c.mapping(m.get("in_list"), f"{path}.in_list") or {}).items():
        if not isinstance(values, list) or not values:
            c.fail(f"{path}.in_list.{col}", "expected a non-empty list of values")
            continue
        lists[str(col)] = list(values)
    out["in_list"] = lists
    if not any(out.values()):
        c.fail(path, "give at least one rule: not_null, unique, range, regex, in_list, schema")
    return out


def regex_problem(pattern: str) -> str:
    """Why DuckDB's regular expressions (RE2: linear time, so a pattern
    cannot hang a run) refuse ``pattern``, or ''. (Where the engine is left
    out, as in the Lambda zip, only Python's parser checks it: such a
    deployment runs no pipelines.)"""
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc).split("\n")[0][:200]
    try:
        import duckdb
    except ImportError:
        return ""
    try:
        from datamcp.core.pipelines.exprc import F, K

        con = duckdb.connect()
        con.sql("SELECT 1").select(F("regexp_full_match", K(""), K(pattern))).fetchall()
    except duckdb.Error as exc:
        return str(exc).split("\n")[0][:200]
    return ""


def _shown(t: Typed) -> Expr:
    from datamcp.core.pipelines.exprc import F, K
    from datamcp.core.pipelines.exprfn import text_of

    if t.kind == "string":
        return F("concat", K("'"), t.expr, K("'"))
    return text_of(t)


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    from datamcp.core.pipelines.exprc import NUMERIC, C, F, K, Typed, isnull, notnull
    from datamcp.core.pipelines.exprfn import text_of

    L = b.layout
    errors: list[tuple[Expr, Expr]] = []
    for col in o["schema"]:
        if col not in L.phys:
            b.fail(f"{path}.schema.{col}", f"required column {col!r} is missing")

    def col_of(name: str, where: str) -> Typed | None:
        if not b.need([name], where):
            return None
        return Typed(C(L.phys[name]), L.kinds[name])

    for name in o["not_null"]:
        t = col_of(name, f"{path}.not_null")
        if t is not None:
            empty = isnull(t.expr)
            if t.kind == "string":
                empty = empty | (t.expr == K(""))
            errors.append((empty, K(f"not_null: {name} is empty")))
    for name, kind in o["schema"].items():
        if name in L.phys and not (
            L.kinds[name] == kind or (kind == "float" and L.kinds[name] == "integer")
        ):
            t = Typed(C(L.phys[name]), L.kinds[name])
            errors.append(
                (notnull(t.expr), F("concat", K(f"schema: {name} is not {kind}: "), _shown(t)))
            )
    for name, bounds in o["range"].items():
        t = col_of(name, f"{path}.range.{name}")
        if t is None:
            continue
        if t.kind not in NUMERIC - {"boolean"}:
            errors.append(
                (notnull(t.expr), F("concat", K(f"range: {name} is not a number: "), _shown(t)))
            )
            continue
        lo, hi = bounds.get("min"), bounds.get("max")
        out: Expr = K(False)
        if lo is not None:
            out = out | (t.expr < K(lo))
        if hi is not None:
            out = out | (t.expr > K(hi))
        reason = F("concat", K(f"range: {name}="), text_of(t), K(f" is outside [{lo}, {hi}]"))
        errors.append((notnull(t.expr) & out, reason))
    for name, pattern in o["regex"].items():
        t = col_of(name, f"{path}.regex.{name}")
        if t is not None:
            bad = ~F("regexp_full_match", text_of(t), K(pattern))
            reason = F("concat", K(f"regex: {name}="), _shown(t), K(f" does not match {pattern!r}"))
            errors.append((notnull(t.expr) & bad, reason))
    for name, values in o["in_list"].items():
        t = col_of(name, f"{path}.in_list.{name}")
        if t is None:
            continue
        same = [v for v in values if _fits(t.kind, v)]
        inside = t.expr.isin(*[K(v) for v in same]) if same else K(False)
        reason = F("concat", K(f"in_list: {name}="), _shown(t), K(" is not allowed"))
        errors.append((notnull(t.expr) & ~inside, reason))
    unique = [[n] for n in o["unique"] if b.need([n], f"{path}.unique")]
    if unique:
        dedupe.seen_stage(b, path, unique, reject=True, errors=errors)
    else:
        b.stage(path, errors=errors)


def _fits(kind: str, v: Any) -> bool:
    if v is None or isinstance(v, dict | list):
        return False
    if kind in ("integer", "float"):
        return isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "boolean":
        return isinstance(v, bool)
    return kind == "string" and isinstance(v, str)
