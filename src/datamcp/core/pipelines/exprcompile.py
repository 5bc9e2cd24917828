"""The expression language's compiler: an AST (:mod:`.expr`) bound to one
batch's columns, built from the expression kinds of :mod:`.exprc` and the
functions of :mod:`.exprfn` (which build on those kinds, so the compiler
sits above both)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datamcp.core.pipelines.expr import (
    Binary,
    Call,
    Col,
    ExprError,
    IsNull,
    Item,
    ListOf,
    Lit,
    Node,
    Param,
    Parsed,
    Unary,
)
from datamcp.core.pipelines.exprc import (
    NUMERIC,
    PY_NAMES,
    C,
    F,
    K,
    Typed,
    arithmetic,
    compare,
    isnull,
    literal,
    logic,
    membership,
    notnull,
    number,
    truthy,
    type_error,
    when,
)
from datamcp.core.pipelines.exprfn import call


class Compiler:
    """Binds ASTs to one batch layout: ``columns`` maps a column name to its
    (physical name, pipeline type)."""

    def __init__(
        self, columns: Mapping[str, tuple[str, str]], params: Mapping[str, Any] | None
    ) -> None:
        self.columns = columns
        self.params = params or {}

    def compile(self, parsed: Parsed) -> Typed:
        """Raises ExprError: an unknown column or parameter."""
        for name, pos in parsed.columns.items():
            if name not in self.columns:
                known = ", ".join(self.columns) or "none"
                raise ExprError(f"unknown column {name!r} (columns: {known})", pos)
        for name, pos in parsed.params.items():
            if name not in self.params:
                raise ExprError(f"unknown parameter ${name}", pos)
        return self.node(parsed.root)

    def node(self, n: Node) -> Typed:
        if isinstance(n, Lit):
            return literal(n.value)
        if isinstance(n, Param):
            return literal(self.params[n.name])
        if isinstance(n, Col):
            physical, kind = self.columns[n.name]
            return Typed(C(physical), kind)
        if isinstance(n, ListOf):
            items = [self.node(i) for i in n.items]
            if all(i.is_const for i in items):
                return literal([i.const for i in items])
            return Typed(K(None), "list", tuple(e for i in items for e in i.errors))
        if isinstance(n, Unary):
            return self.unary(n.op, self.node(n.arg))
        if isinstance(n, IsNull):
            arg = self.node(n.arg)
            test = notnull(arg.expr) if n.negate else isnull(arg.expr)
            return Typed(test, "boolean", arg.errors)
        if isinstance(n, Item):
            return self.item(self.node(n.container), self.node(n.key))
        if isinstance(n, Call):
            return call(n.name, [self.node(a) for a in n.args])
        assert isinstance(n, Binary)
        left, right = self.node(n.left), self.node(n.right)
        if n.op in ("and", "or"):
            return logic(n.op, left, right)
        if n.op in ("in", "not in"):
            return membership(left, right, negate=n.op == "not in")
        if n.op in ("==", "!=", "<", "<=", ">", ">="):
            return compare(n.op, left, right)
        return arithmetic(n.op, left, right)

    def unary(self, op: str, arg: Typed) -> Typed:
        if op == "not":
            return Typed(~truthy(arg), "boolean", arg.errors)
        if arg.kind == "null":
            return arg
        if arg.kind not in NUMERIC:
            return type_error(f"cannot compute -{PY_NAMES[arg.kind]}", arg)
        value = number(arg)
        return Typed(K(0) - value, "float" if arg.kind == "float" else "integer", arg.errors)

    def item(self, container: Typed, key: Typed) -> Typed:
        errors = container.errors + key.errors
        if container.is_const and key.is_const:  # a parameter's field: known now
            value = container.const
            try:
                found = value.get(key.const) if isinstance(value, dict) else value[key.const]
            except (IndexError, KeyError, TypeError):
                found = None
            return literal(found)
        if container.kind != "json" or not key.is_const:
            return Typed(K(None), "null", errors)
        pointer = "/" + str(key.const).replace("~", "~0").replace("/", "~1")
        value = F("try", F("json_extract", container.expr, K(pointer)))
        # JSON null is null here too.
        return Typed(when(F("json_type", value) == K("NULL"), K(None), value), "json", errors)
