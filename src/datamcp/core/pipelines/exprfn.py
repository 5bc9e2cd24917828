"""The expression language's functions, compiled to DuckDB expressions with
the language's null and error rules (see :mod:`.exprc`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import duckdb

from datamcp.core.pipelines.exprc import (
    NUMERIC,
    PY_NAMES,
    Expr,
    F,
    K,
    Typed,
    coalesce,
    isnull,
    notnull,
    number,
    type_error,
    when,
)

VARCHAR = duckdb.sqltypes.VARCHAR
DOUBLE = duckdb.sqltypes.DOUBLE
BIGINT = duckdb.sqltypes.BIGINT
INTEGER = duckdb.sqltypes.INTEGER


def errors_of(args: Sequence[Typed]) -> tuple[tuple[Expr, Expr], ...]:
    return tuple(e for a in args for e in a.errors)


def text_of(t: Typed) -> Expr:
    """``str(value)`` as Python writes it, for the types where it matters."""
    if t.kind == "string":
        return t.expr
    if t.kind == "boolean":
        return when(t.expr, K("True"), K("False"))
    if t.kind == "json":
        return F("json_extract_string", t.expr, K("$"))
    if t.kind == "null":
        return K(None).cast(VARCHAR)
    return t.expr.cast(VARCHAR)


def _string_only(name: str, fn: Callable[[Expr], Expr]) -> Callable[[list[Typed]], Typed]:
    def build(args: list[Typed]) -> Typed:
        (a,) = args
        if a.kind == "null":
            return Typed(K(None), "null", a.errors)
        if a.kind != "string":
            return type_error(f"{name}(): expected a string, got {PY_NAMES[a.kind]}", a)
        return Typed(fn(a.expr), "string", a.errors)

    return build


def _on_text(fn: Callable[..., Expr], kind: str) -> Callable[[list[Typed]], Typed]:
    """Functions that read their arguments as text (``str()`` of each);
    null when the first is null."""

    def build(args: list[Typed]) -> Typed:
        first = args[0]
        if first.kind == "null":
            return Typed(K(None), "null", errors_of(args))
        value = fn(*[text_of(a) for a in args])
        return Typed(when(isnull(first.expr), K(None), value), kind, errors_of(args))

    return build


def _length(args: list[Typed]) -> Typed:
    (a,) = args
    if a.kind == "null":
        return Typed(K(None), "null", a.errors)
    if a.kind == "string":
        return Typed(F("length", a.expr), "integer", a.errors)
    if a.kind == "json":
        return Typed(F("try", F("json_array_length", a.expr)), "integer", a.errors)
    return type_error(f"length(): object of type '{PY_NAMES[a.kind]}' has no len()", a)


def _substr(args: list[Typed]) -> Typed:
    s, start, *rest = args
    errors = errors_of(args)
    if s.kind == "null":
        return Typed(K(None), "null", errors)
    if s.kind != "string" or start.kind != "integer" or (rest and rest[0].kind not in NUMERIC):
        return type_error("substr(string, start[, length])", s)
    begin = F("greatest", start.expr, K(1))
    value = (
        F("substr", s.expr, begin)
        if not rest
        else F("substr", s.expr, begin, F("greatest", number(rest[0]), K(0)))
    )
    return Typed(value, "string", errors)


def _concat(args: list[Typed]) -> Typed:
    parts = [coalesce(text_of(a), K("")) for a in args]
    return Typed(F("concat", *parts), "string", errors_of(args))


def _coalesce(args: list[Typed]) -> Typed:
    live = [a for a in args if a.kind != "null"]
    if not live:
        return Typed(K(None), "null", errors_of(args))
    kinds = {a.kind for a in live}
    if len(kinds) == 1:
        return Typed(coalesce(*[a.expr for a in live]), live[0].kind, errors_of(args))
    if kinds <= NUMERIC:
        values = [number(a).cast(DOUBLE) for a in live]
        return Typed(coalesce(*values), "float", errors_of(args))
    return Typed(coalesce(*[text_of(a) for a in live]), "string", errors_of(args))


Builder = Callable[[list[Typed]], Typed]


def _numeric(name: str, fn: Callable[..., Expr], kind: str | None = None) -> Builder:
    def build(args: list[Typed]) -> Typed:
        errors = errors_of(args)
        if any(a.kind == "null" for a in args):
            return Typed(K(None), "null", errors)
        bad = [a for a in args if a.kind not in NUMERIC]
        if bad:
            names = ", ".join(PY_NAMES[a.kind] for a in args)
            return type_error(f"{name}(): bad operand type(s) {names}", *args)
        out_kind = kind or ("float" if any(a.kind == "float" for a in args) else "integer")
        values = [number(a) for a in args]
        if out_kind == "float":
            values = [v.cast(DOUBLE) for v in values]
        return Typed(fn(*values), out_kind, errors)

    return build


def _round(args: list[Typed]) -> Typed:
    if len(args) == 1:
        return _numeric(
            "round", lambda v: F("round_even", v, K(0).cast(INTEGER)).cast(BIGINT), "integer"
        )(args)
    return _numeric("round", lambda v, n: F("round_even", v, n.cast(INTEGER)), "float")(args)


def _convert(name: str, target: duckdb.sqltypes.DuckDBPyType, kind: str) -> Builder:
    def build(args: list[Typed]) -> Typed:
        (a,) = args
        if a.kind == "null":
            return Typed(K(None), "null", a.errors)
        source = a.expr
        if a.kind == "string":
            source = when(source == K(""), K(None), F("trim", source))
        elif a.kind == "boolean":
            source = source.cast(BIGINT)
        if kind == "integer" and a.kind == "float":
            value = F("trunc", source).cast(BIGINT)  # Python int() truncates
        elif kind == "integer" and a.kind in ("string", "json"):
            # int('3.5') fails in the language; int('3') does not.
            whole = F("regexp_full_match", source.cast(VARCHAR), K(r"\s*[+-]?[0-9]+\s*"))
            value = when(whole, source.try_cast(target), K(None).cast(target))
        else:
            value = source.try_cast(target)
        failed = notnull(source) & isnull(value)
        reason = F("concat", K(f"{name}("), text_of(a), K(f"): not {kind}"))
        return Typed(value, kind, (*a.errors, (failed, reason)))

    return build


def _str(args: list[Typed]) -> Typed:
    (a,) = args
    return Typed(text_of(a), "string" if a.kind != "null" else "null", a.errors)


def _is_null(args: list[Typed]) -> Typed:
    (a,) = args
    return Typed(isnull(a.expr), "boolean", a.errors)


def _extreme(name: str) -> Callable[[list[Typed]], Typed]:
    fn = "greatest" if name == "max" else "least"

    def build(args: list[Typed]) -> Typed:
        errors = errors_of(args)
        if any(a.kind == "null" for a in args):
            return Typed(K(None), "null", errors)
        if all(a.kind == "string" for a in args):
            value = F(fn, *[a.expr for a in args])
            anynull = isnull(args[0].expr)
            for a in args[1:]:
                anynull = anynull | isnull(a.expr)
            return Typed(when(anynull, K(None), value), "string", errors)
        return _numeric(name, lambda *v: _null_if_any(F(fn, *v), v))(args)

    return build


def _null_if_any(value: Expr, parts: Sequence[Expr]) -> Expr:
    anynull = isnull(parts[0])
    for p in parts[1:]:
        anynull = anynull | isnull(p)
    return when(anynull, K(None), value)


BUILDERS: dict[str, Callable[[list[Typed]], Typed]] = {
    "lower": _string_only("lower", lambda e: F("lower", e)),
    "upper": _string_only("upper", lambda e: F("upper", e)),
    "trim": _string_only("trim", lambda e: F("trim", e)),
    "length": _length,
    "starts_with": _on_text(lambda s, p: F("starts_with", s, p), "boolean"),
    "ends_with": _on_text(lambda s, p: F("ends_with", s, p), "boolean"),
    "contains": _on_text(lambda s, p: F("contains", s, p), "boolean"),
    "replace": _on_text(lambda s, a, b: F("replace", s, a, b), "string"),
    "substr": _substr,
    "concat": _concat,
    "coalesce": _coalesce,
    "abs": _numeric("abs", lambda v: F("abs", v)),
    "round": _round,
    "floor": _numeric("floor", lambda v: F("floor", v).cast(BIGINT), "integer"),
    "ceil": _numeric("ceil", lambda v: F("ceil", v).cast(BIGINT), "integer"),
    "min": _extreme("min"),
    "max": _extreme("max"),
    "int": _convert("int", BIGINT, "integer"),
    "float": _convert("float", DOUBLE, "float"),
    "str": _str,
    "is_null": _is_null,
}


def call(name: str, args: list[Typed]) -> Typed:
    return BUILDERS[name](args)
