"""The expression language on DuckDB expression objects: values, their
pipeline types and the language's rules (comparison, arithmetic,
membership, truthiness). :mod:`.exprcompile` binds an AST (:mod:`.expr`) to
a batch's column names and types with them.

Nothing here builds text for DuckDB to parse: every node becomes a
``ColumnExpression``, ``ConstantExpression``, ``FunctionExpression`` or
``CaseExpression``. A compiled expression is a value plus *error
conditions*: (condition, reason) pairs, true on the rows where the language
says evaluation fails (a type error such as ``'a' > 1``, division by zero, a
failed ``int('x')``). The engine rejects those rows with the reason,
vectorised, instead of stopping the batch. Conditions inside the right side
of ``and`` / ``or`` hold only where that side is evaluated, as in the
row-at-a-time language.

Semantics kept from the language: a comparison with null is false, ``==``
between two nulls is true, arithmetic on null is null, ``//`` floors and
``%`` takes the divisor's sign (as in Python), ``x in 'text'`` tests a
substring, and ``and``/``or``/``not`` test truthiness (0, '' and null are
false).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
from duckdb import (
    CaseExpression,
    CoalesceOperator,
    ColumnExpression,
    ConstantExpression,
    FunctionExpression,
)

Expr = duckdb.Expression
JSON = duckdb.sqltypes.DuckDBPyType("JSON")
NUMERIC = frozenset({"integer", "float", "boolean"})
PY_NAMES = {
    "string": "str",
    "integer": "int",
    "float": "float",
    "boolean": "bool",
    "timestamp": "datetime",
    "json": "json",
    "null": "NoneType",
    "list": "list",
}
_NO = object()


def K(value: Any) -> Expr:
    return ConstantExpression(value)


def F(name: str, *args: Expr) -> Expr:
    return FunctionExpression(name, *args)


def C(name: str) -> Expr:
    return ColumnExpression(f'"{name}"') if _needs_quotes(name) else ColumnExpression(name)


def _needs_quotes(name: str) -> bool:
    return not name.replace("_", "a").isalnum() or name[:1].isdigit()


def coalesce(*args: Expr) -> Expr:
    return CoalesceOperator(*args)


def when(cond: Expr, then: Expr, otherwise: Expr) -> Expr:
    return CaseExpression(cond, then).otherwise(otherwise)


def isnull(e: Expr) -> Expr:
    return e.isnull()


def notnull(e: Expr) -> Expr:
    return e.isnotnull()


def false_if_null(e: Expr) -> Expr:
    return coalesce(e, K(False))


@dataclass(frozen=True, slots=True)
class Typed:
    """A compiled sub-expression: its DuckDB value, its pipeline type, and
    the error conditions (condition, reason) under which a row fails."""

    expr: Expr
    kind: str
    errors: tuple[tuple[Expr, Expr], ...] = ()
    const: Any = field(default=_NO)

    @property
    def is_const(self) -> bool:
        return self.const is not _NO


Error = tuple[Expr, Expr]


def guard(errors: Sequence[Error], where: Expr) -> tuple[Error, ...]:
    """Errors that count only where ``where`` holds."""
    return tuple((false_if_null(where) & cond, reason) for cond, reason in errors)


def literal(value: Any) -> Typed:
    if value is None:
        return Typed(K(None), "null", const=None)
    if isinstance(value, bool):
        return Typed(K(value), "boolean", const=value)
    if isinstance(value, int):
        return Typed(K(value), "integer", const=value)
    if isinstance(value, float):
        return Typed(K(value), "float", const=value)
    if isinstance(value, str):
        return Typed(K(value), "string", const=value)
    if isinstance(value, list):
        return Typed(K(None), "list", const=value)
    # A mapping parameter: a JSON value.
    import json

    return Typed(K(json.dumps(value)).cast(JSON), "json", const=value)


# ---- shared rules ---------------------------------------------------------------------


def type_error(message: str, *parts: Typed) -> Typed:
    """A value of a type combination the language refuses: null on every row
    and an error wherever all the parts are present."""
    cond: Expr = K(True)
    for p in parts:
        cond = cond & notnull(p.expr)
    errors = tuple(e for p in parts for e in p.errors)
    return Typed(K(None), "null", (*errors, (cond, K(message))))


def number(t: Typed) -> Expr:
    if t.kind == "boolean":
        return t.expr.cast(duckdb.sqltypes.BIGINT)
    if t.kind == "json":
        return t.expr.try_cast(duckdb.sqltypes.DOUBLE)
    return t.expr


def truthy(t: Typed) -> Expr:
    """Python truthiness of a value, never null (null is false)."""
    e = t.expr
    if t.kind == "null":
        return K(False)
    if t.kind == "boolean":
        return false_if_null(e)
    if t.kind in ("integer", "float"):
        return false_if_null(e != K(0))
    if t.kind == "string":
        return false_if_null(F("length", e) > K(0))
    if t.kind == "list":
        return K(bool(t.const)) if t.is_const else K(False)
    if t.kind == "json":
        empty = K(["false", "0", '""', "[]", "{}", "null", "0.0"])
        return false_if_null(~F("list_contains", empty, e.cast(duckdb.sqltypes.VARCHAR)))
    return notnull(e)


def logic(op: str, left: Typed, right: Typed) -> Typed:
    a, b = truthy(left), truthy(right)
    if op == "and":
        return Typed(a & b, "boolean", left.errors + guard(right.errors, a))
    return Typed(a | b, "boolean", left.errors + guard(right.errors, ~a))


def comparable(a: Typed, b: Typed) -> tuple[Expr, Expr] | None:
    """The two sides as values DuckDB compares like the language does, or
    None when the language refuses to compare their types."""
    if a.kind in NUMERIC and b.kind in NUMERIC:
        return number(a), number(b)
    if a.kind == b.kind and a.kind in ("string", "timestamp", "json"):
        return a.expr, b.expr
    for x, y, flip in ((a, b, False), (b, a, True)):
        if x.kind == "json" and y.kind in NUMERIC:
            pair = (number(x), number(y))
            return (pair[1], pair[0]) if flip else pair
        if x.kind == "json" and y.kind == "string":
            text = F("json_extract_string", x.expr, K("$"))
            return (y.expr, text) if flip else (text, y.expr)
    return None


def compare(op: str, left: Typed, right: Typed) -> Typed:
    errors = left.errors + right.errors
    if left.kind == "null" or right.kind == "null":
        other = right if left.kind == "null" else left
        if op == "==":
            return Typed(isnull(other.expr), "boolean", errors)
        return Typed(K(False), "boolean", errors)
    pair = comparable(left, right)
    if pair is None:
        if op == "==":  # different types are never equal (two nulls are)
            return Typed(isnull(left.expr) & isnull(right.expr), "boolean", errors)
        if op == "!=":
            return Typed(notnull(left.expr) & notnull(right.expr), "boolean", errors)
        symbol = f"{PY_NAMES[left.kind]} {op} {PY_NAMES[right.kind]}"
        failed = type_error(f"cannot compare {symbol}", left, right)
        return Typed(K(False), "boolean", failed.errors)
    a, b = pair
    if op == "==":
        both_null = isnull(left.expr) & isnull(right.expr)
        return Typed(both_null | false_if_null(a == b), "boolean", errors)
    value = {"!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    return Typed(false_if_null(value), "boolean", errors)


def membership(left: Typed, right: Typed, *, negate: bool) -> Typed:
    errors = left.errors + right.errors
    if right.kind == "list" and right.is_const:
        values = [v for v in right.const if v is not None]
        same = [v for v in values if literal(v).kind == left.kind or _numeric_pair(left, v)]
        if left.kind == "null" or not same:
            inside: Expr = K(False)
        else:
            inside = false_if_null(left.expr.isin(*[K(v) for v in same]))
        present = notnull(left.expr)
        return Typed(present & (~inside if negate else inside), "boolean", errors)
    if right.kind == "string" and left.kind == "string":
        inside = false_if_null(F("contains", right.expr, left.expr))
        both = notnull(left.expr) & notnull(right.expr)
        return Typed(both & (~inside if negate else inside), "boolean", errors)
    if right.kind == "null" or left.kind == "null":
        return Typed(K(False), "boolean", errors)
    failed = type_error(f"cannot test {PY_NAMES[left.kind]} in {PY_NAMES[right.kind]}", left, right)
    return Typed(K(False), "boolean", failed.errors)


def _numeric_pair(left: Typed, value: Any) -> bool:
    return left.kind in NUMERIC and literal(value).kind in NUMERIC


def arithmetic(op: str, left: Typed, right: Typed) -> Typed:
    errors = left.errors + right.errors
    if left.kind == "null" or right.kind == "null":
        return Typed(K(None), "null", errors)
    symbol = f"{PY_NAMES[left.kind]} {op} {PY_NAMES[right.kind]}"
    if op == "+" and left.kind == "string" and right.kind == "string":
        return Typed(F("concat", left.expr, right.expr), "string", errors)
    numeric = {"integer", "float", "boolean", "json"}
    if left.kind not in numeric or right.kind not in numeric:
        return type_error(f"cannot compute {symbol}", left, right)
    a, b = number(left), number(right)
    integral = left.kind in ("integer", "boolean") and right.kind in ("integer", "boolean")
    present = notnull(a) & notnull(b)
    if op in ("/", "//", "%"):
        zero = (present & (b == K(0)), K("division by zero"))
        fa, fb = a.cast(duckdb.sqltypes.DOUBLE), b.cast(duckdb.sqltypes.DOUBLE)
        safe_b = when(b == K(0), K(None), fb)
        if op == "/":
            return Typed(fa / safe_b, "float", (*errors, zero))
        floor = F("floor", fa / safe_b)
        if op == "//":
            value = floor.cast(duckdb.sqltypes.BIGINT) if integral else floor
            return Typed(value, "integer" if integral else "float", (*errors, zero))
        value = fa - fb * floor  # Python's modulo: the sign of the divisor
        if integral:
            value = value.cast(duckdb.sqltypes.BIGINT)
        return Typed(value, "integer" if integral else "float", (*errors, zero))
    if integral:
        # Integers beyond 64 bits would fail the whole batch: try() makes
        # them null, and the row is rejected with the reason.
        raw = {"+": a + b, "-": a - b, "*": a * b}[op]
        value = F("try", raw)
        overflow = (present & isnull(value), K(f"cannot compute {symbol}: integer overflow"))
        return Typed(value, "integer", (*errors, overflow))
    fa, fb = a.cast(duckdb.sqltypes.DOUBLE), b.cast(duckdb.sqltypes.DOUBLE)
    return Typed({"+": fa + fb, "-": fa - fb, "*": fa * fb}[op], "float", errors)
