"""``cast: {col: type}``: converts columns; a value that does not convert
rejects its row with the reason (``cast amount: 'abc' is not a number``).
Empty text is null."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import TYPES, Checker, long_form

if TYPE_CHECKING:  # the engine is imported when a plan is built, not with the spec
    from datamcp.core.pipelines.exprc import Expr, Typed
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "cast"
_TRUE = ["true", "t", "yes", "y", "1", "on"]
_FALSE = ["false", "f", "no", "n", "0", "off"]


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    mapping = c.str_map(long_form(o), f"{path}.columns", values=TYPES)
    if not mapping:
        c.fail(f"{path}.columns", f"required: column: type ({', '.join(TYPES)})")
    return {"columns": mapping}


def _quoted(v: Expr) -> Expr:
    from datamcp.core.pipelines.exprc import F, K

    return F("concat", K("'"), v, K("'"))


def convert(source: Typed, target: str) -> tuple[Expr, Expr | None]:
    """(value, reason where it fails) for ``source`` cast to ``target``."""
    from duckdb import sqltypes as T

    from datamcp.core.pipelines.exprc import JSON, F, K, coalesce, notnull, when
    from datamcp.core.pipelines.exprfn import text_of

    e, kind = source.expr, source.kind
    if kind in (target, "null"):
        return e, None
    if kind in ("string", "json"):
        text = F("trim", text_of(source)) if kind == "json" else e
        s = when(F("trim", text) == K(""), K(None).cast(T.VARCHAR), text)
        shown = _quoted(e.cast(T.VARCHAR))
        if target == "float":
            return s.try_cast(T.DOUBLE), F("concat", shown, K(" is not a number"))
        if target == "integer":
            exact = s.try_cast(T.BIGINT)
            d = s.try_cast(T.DOUBLE)
            # '3' and '3.0' are 3; '3.5' is not a whole number (DuckDB alone
            # would round it); an exact cast first keeps big integers exact.
            value = coalesce(
                when(
                    F("contains", s, K(".")) | F("contains", F("lower", s), K("e")),
                    when(d == F("trunc", d), d.try_cast(T.BIGINT), K(None).cast(T.BIGINT)),
                    exact,
                ),
            )
            reason = when(
                notnull(d) & (d != F("trunc", d)),
                F("concat", shown, K(" is not a whole number")),
                F("concat", shown, K(" is not an integer")),
            )
            return value, reason
        if target == "boolean":
            low = F("lower", F("trim", s))
            value = when(
                F("list_contains", K(_TRUE), low),
                K(True),
                when(F("list_contains", K(_FALSE), low), K(False), K(None).cast(T.BOOLEAN)),
            )
            return value, F("concat", shown, K(" is not a boolean (true/false, yes/no, 1/0)"))
        if target == "timestamp":
            iso = F("replace", F("trim", s), K("Z"), K("+00:00"))
            return iso.try_cast(T.TIMESTAMP_TZ), F(
                "concat", shown, K(" is not an ISO 8601 timestamp")
            )
        if target == "json":
            ok = F("json_valid", s)
            return when(ok, s.cast(JSON), K(None).cast(JSON)), F(
                "concat", _quoted(F("left", e.cast(T.VARCHAR), K(40))), K(" is not JSON")
            )
        return text_of(source), None  # string
    if target == "string":
        if kind == "timestamp":
            return F("strftime", e, K("%Y-%m-%dT%H:%M:%S.%f%z")), None
        return text_of(source), None
    if target == "json":
        return F("to_json", e), None
    if kind in ("integer", "boolean") and target == "float":
        return e.cast(T.DOUBLE), None
    if kind == "boolean" and target == "integer":
        return e.cast(T.BIGINT), None
    if kind == "float" and target == "integer":
        whole = e == F("trunc", e)
        return when(whole, e.try_cast(T.BIGINT), K(None).cast(T.BIGINT)), F(
            "concat", e.cast(T.VARCHAR), K(" is not a whole number")
        )
    if kind == "integer" and target == "boolean":
        return when(e == K(1), K(True), when(e == K(0), K(False), K(None).cast(T.BOOLEAN))), F(
            "concat", e.cast(T.VARCHAR), K(" is not a boolean (true/false, yes/no, 1/0)")
        )
    if kind in ("integer", "float") and target == "timestamp":
        return F("try", F("to_timestamp", e.cast(T.DOUBLE))), F(
            "concat", e.cast(T.VARCHAR), K(" is not a valid epoch time")
        )
    names = {"timestamp": "datetime", "float": "float", "boolean": "bool", "integer": "int"}
    return K(None).cast(T.VARCHAR), K(f"{names.get(kind, kind)} is not {target}")


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    from datamcp.core.pipelines.exprc import C, F, K, Typed, isnull, notnull

    mapping = o["columns"]
    b.need(list(mapping), f"{path}.columns")
    values: dict[str, Expr] = {}
    errors: list[tuple[Expr, Expr]] = []
    targets: dict[str, tuple[str, str]] = {}
    for col, target in mapping.items():
        if col not in b.layout.phys:
            continue
        source = Typed(C(b.layout.phys[col]), b.layout.kinds[col])
        value, reason = convert(source, target)
        phys = b.new_phys()
        values[phys] = value
        targets[col] = (phys, target)
        if reason is not None:
            failed = notnull(source.expr) & isnull(C(phys))
            if source.kind == "string":
                failed = failed & (F("trim", source.expr) != K(""))
            errors.append((failed, F("concat", K(f"cast {col}: "), reason)))
    b.stage(path, values, errors)
    for col, (phys, target) in targets.items():
        b.layout.phys[col] = phys
        b.layout.kinds[col] = target
