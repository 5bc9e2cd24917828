"""The pipeline expression language: a small, safe language for filters and
derived columns, compiled once to Python closures (never ``eval``).

Grammar (lowest precedence first)::

    expr    := or
    or      := and ("or" and)*
    and     := not ("and" not)*
    not     := "not" not | cmp
    cmp     := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum
               | "not"? "in" sum | "is" "not"? "null")?
    sum     := prod (("+" | "-") prod)*
    prod    := unary (("*" | "/" | "//" | "%") unary)*
    unary   := "-" unary | postfix
    postfix := atom ("." NAME | "[" expr "]")*
    atom    := NUMBER | STRING | "true" | "false" | "null" | NAME | `quoted name`
               | "$" NAME | NAME "(" args ")" | "(" expr ")" | "[" args "]"

Names are columns; ``$name`` is a run parameter. ``null`` behaves like SQL's:
a comparison with null is false (``== null`` / ``is null`` test for it),
arithmetic on null gives null. A type error (``'a' > 1``) raises
:class:`EvalError`, which the engine turns into a rejected row.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Row = Sequence[Any]
Compiled = Callable[[Row], Any]


class ExprError(ValueError):
    """The expression text is invalid; ``position`` is the offending offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position + 1})")
        self.position = position


class EvalError(Exception):
    """Evaluating an expression on a row failed (a type error, division by zero...)."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<num>\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<qname>`[^`]+`)
  | (?P<param>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|//|[<>+\-*/%(),.\[\]])
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "true", "false", "null"}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
MAX_LENGTH = 4096
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, name, qname, param, op, kw, end
    text: str
    pos: int
    value: Any = None


def _tokens(text: str) -> list[_Tok]:
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters", MAX_LENGTH)
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"unexpected character {text[pos]!r}", pos)
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "num":
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
            out.append(_Tok("num", raw, pos, value))
        elif kind == "str":
            body = raw[1:-1]
            value = re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(1)), body)
            out.append(_Tok("str", raw, pos, value))
        elif kind == "qname":
            out.append(_Tok("name", raw, pos, raw[1:-1]))
        elif kind == "param":
            out.append(_Tok("param", raw, pos, raw[1:]))
        elif kind == "name":
            k = "kw" if raw in _KEYWORDS else "name"
            out.append(_Tok(k, raw, pos, raw))
        elif kind == "op":
            out.append(_Tok("op", raw, pos, raw))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


# ---- functions ------------------------------------------------------------------


def _str_fn(fn: Callable[[str], Any]) -> Callable[..., Any]:
    def call(v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            raise EvalError(f"expected a string, got {type(v).__name__}")
        return fn(v)

    return call


def _coalesce(*args: Any) -> Any:
    for a in args:
        if a is not None:
            return a
    return None


def _concat(*args: Any) -> Any:
    return "".join("" if a is None else str(a) for a in args)


def _substr(s: Any, start: Any, length: Any = None) -> Any:
    if s is None:
        return None
    if not isinstance(s, str) or not isinstance(start, int):
        raise EvalError("substr(string, start[, length])")
    begin = max(0, start - 1)
    return s[begin:] if length is None else s[begin : begin + int(length)]


def _num(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if any(a is None for a in args):
            return None
        try:
            return fn(*args)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EvalError(str(exc)) from None

    return call


def _conv(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def call(v: Any) -> Any:
        if v is None or v == "":
            return None
        try:
            return kind(v)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EvalError(f"{kind.__name__}({v!r}): {exc}") from None

    return call


FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int]] = {
    # name: (function, min args, max args)
    "lower": (_str_fn(str.lower), 1, 1),
    "upper": (_str_fn(str.upper), 1, 1),
    "trim": (_str_fn(str.strip), 1, 1),
    "length": (lambda v: None if v is None else len(v), 1, 1),
    "starts_with": (lambda s, p: None if s is None else str(s).startswith(str(p)), 2, 2),
    "ends_with": (lambda s, p: None if s is None else str(s).endswith(str(p)), 2, 2),
    "contains": (lambda s, p: None if s is None else str(p) in str(s), 2, 2),
    "replace": (lambda s, a, b: None if s is None else str(s).replace(str(a), str(b)), 3, 3),
    "substr": (_substr, 2, 3),
    "concat": (_concat, 1, 32),
    "coalesce": (_coalesce, 1, 32),
    "abs": (_num(abs), 1, 1),
    "round": (_num(lambda v, n=0: round(v, int(n))), 1, 2),
    "floor": (_num(math.floor), 1, 1),
    "ceil": (_num(math.ceil), 1, 1),
    "min": (_num(min), 1, 32),
    "max": (_num(max), 1, 32),
    "int": (_conv(int), 1, 1),
    "float": (_conv(float), 1, 1),
    "str": (lambda v: None if v is None else str(v), 1, 1),
    "is_null": (lambda v: v is None, 1, 1),
}


# ---- operators with null and type semantics ------------------------------------


def _cmp(op: Callable[[Any, Any], bool], symbol: str) -> Callable[[Any, Any], bool]:
    def run(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        try:
            return op(a, b)
        except TypeError:
            raise EvalError(
                f"cannot compare {type(a).__name__} {symbol} {type(b).__name__}"
            ) from None

    return run


def _arith(op: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    def run(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        try:
            return op(a, b)
        except ZeroDivisionError:
            raise EvalError("division by zero") from None
        except (TypeError, OverflowError):
            raise EvalError(
                f"cannot compute {type(a).__name__} {symbol} {type(b).__name__}"
            ) from None

    return run


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str) != isinstance(b, str):
        raise TypeError
    return a + b


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "<": _cmp(operator.lt, "<"),
    "<=": _cmp(operator.le, "<="),
    ">": _cmp(operator.gt, ">"),
    ">=": _cmp(operator.ge, ">="),
    "+": _arith(_add, "+"),
    "-": _arith(operator.sub, "-"),
    "*": _arith(operator.mul, "*"),
    "/": _arith(operator.truediv, "/"),
    "//": _arith(operator.floordiv, "//"),
    "%": _arith(operator.mod, "%"),
}
_FAST_CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _eq(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return bool(a == b)


def _member(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    try:
        return a in b
    except TypeError:
        raise EvalError(f"cannot test {type(a).__name__} in {type(b).__name__}") from None


def _item(container: Any, key: Any) -> Any:
    if container is None:
        return None
    try:
        if isinstance(container, Mapping):
            return container.get(key)
        return container[key]
    except (IndexError, TypeError, KeyError):
        return None


# ---- parser producing closures ---------------------------------------------------


Shape = tuple[str, str, int, Any]


@dataclass(frozen=True, slots=True)
class _Node:
    """A compiled sub-expression; ``const`` is set when it has a fixed value."""

    fn: Compiled
    const: bool = False
    value: Any = None
    column: int | None = None  # a plain column reference
    shape: Shape | None = None  # a numeric fast path the fused loop may inline


class _AnyColumn(dict[str, int]):
    """Column map for syntax checks before the columns are known."""

    def get(self, key: str, default: Any = None) -> int:
        return 0


class _Parser:
    def __init__(
        self, text: str, columns: Mapping[str, int], params: Mapping[str, Any] | None
    ) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.columns = columns
        self.params = params
        self.depth = 0
        self.used: set[str] = set()

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, text: str) -> bool:
        tok = self.peek()
        if tok.kind == kind and tok.text == text:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            tok = self.peek()
            found = tok.text or "end of expression"
            raise ExprError(f"expected {text!r}, found {found!r}", tok.pos)

    def parse(self) -> _Node:
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {tok.text!r}", tok.pos)
        return node

    def expr(self) -> _Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError("expression nested too deeply", self.peek().pos)
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> _Node:
        node = self.and_()
        while self.accept("kw", "or"):
            right = self.and_()
            a, b = node.fn, right.fn
            node = _Node(_or(a, b))
        return node

    def and_(self) -> _Node:
        node = self.not_()
        while self.accept("kw", "and"):
            right = self.not_()
            a, b = node.fn, right.fn
            node = _Node(_and(a, b))
        return node

    def not_(self) -> _Node:
        if self.accept("kw", "not"):
            inner = self.not_().fn
            return _Node(lambda r: not inner(r))
        return self.cmp()

    def cmp(self) -> _Node:
        left = self.sum_()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            right = self.sum_()
            return _compare(tok.text, left, right)
        if tok.kind == "kw" and tok.text == "is":
            self.take()
            negate = self.accept("kw", "not")
            if not self.accept("kw", "null"):
                raise ExprError("expected 'null' after 'is'", self.peek().pos)
            f = left.fn
            if negate:
                return _Node(lambda r: f(r) is not None)
            return _Node(lambda r: f(r) is None)
        negate = False
        if tok.kind == "kw" and tok.text == "not" and self.toks[self.i + 1].text == "in":
            self.take()
            negate = True
        if self.accept("kw", "in"):
            right = self.sum_()
            a, b = left.fn, right.fn
            if right.const and isinstance(right.value, list):
                try:
                    members: Any = frozenset(right.value)
                except TypeError:
                    members = right.value
                if negate:
                    return _Node(lambda r: (v := a(r)) is not None and v not in members)
                return _Node(lambda r: (v := a(r)) is not None and v in members)
            if negate:
                return _Node(lambda r: (v := a(r)) is not None and not _member(v, b(r)))
            return _Node(lambda r: _member(a(r), b(r)))
        if negate:
            raise ExprError("expected 'in' after 'not'", self.peek().pos)
        return left

    def sum_(self) -> _Node:
        node = self.prod()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.take().text
            node = _binary(op, node, self.prod())
        return node

    def prod(self) -> _Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/", "//", "%"):
            op = self.take().text
            node = _binary(op, node, self.unary())
        return node

    def unary(self) -> _Node:
        if self.accept("op", "-"):
            inner = self.unary()
            if inner.const and isinstance(inner.value, int | float):
                return _const(-inner.value)
            f = inner.fn
            neg = _arith(lambda a, _b: -a, "-")
            return _Node(lambda r: neg(f(r), 0))
        return self.postfix()

    def postfix(self) -> _Node:
        node = self.atom()
        while True:
            if self.accept("op", "."):
                tok = self.take()
                if tok.kind not in ("name", "kw"):
                    raise ExprError("expected a field name after '.'", tok.pos)
                key, f = tok.value, node.fn
                node = _Node(_field(f, key))
            elif self.accept("op", "["):
                index = self.expr()
                self.expect("op", "]")
                f, g = node.fn, index.fn
                node = _Node(_index(f, g))
            else:
                return node

    def args(self, close: str) -> list[_Node]:
        out: list[_Node] = []
        if self.accept("op", close):
            return out
        while True:
            out.append(self.expr())
            if self.accept("op", close):
                return out
            self.expect("op", ",")

    def atom(self) -> _Node:
        tok = self.take()
        if tok.kind in ("num", "str"):
            return _const(tok.value)
        if tok.kind == "kw" and tok.text in ("true", "false", "null"):
            return _const({"true": True, "false": False, "null": None}[tok.text])
        if tok.kind == "param":
            name = tok.value
            if self.params is not None:
                if name not in self.params:
                    raise ExprError(f"unknown parameter ${name}", tok.pos)
                return _const(self.params[name])
            return _const(None)
        if tok.kind == "name":
            if self.peek().kind == "op" and self.peek().text == "(":
                self.take()
                return self.call(tok)
            name = tok.value
            index = self.columns.get(name)
            if index is None:
                known = ", ".join(sorted(self.columns)) or "none"
                raise ExprError(f"unknown column {name!r} (columns: {known})", tok.pos)
            self.used.add(name)
            return _Node(operator.itemgetter(index), column=index)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect("op", ")")
            return node
        if tok.kind == "op" and tok.text == "[":
            items = self.args("]")
            if all(i.const for i in items):
                return _const([i.value for i in items])
            fns = [i.fn for i in items]
            return _Node(lambda r: [f(r) for f in fns])
        found = tok.text or "end of expression"
        raise ExprError(f"unexpected {found!r}", tok.pos)

    def call(self, name_tok: _Tok) -> _Node:
        spec = FUNCTIONS.get(name_tok.value)
        if spec is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise ExprError(f"unknown function {name_tok.value!r} (known: {known})", name_tok.pos)
        fn, lo, hi = spec
        args = self.args(")")
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ExprError(f"{name_tok.value}() takes {want} arguments", name_tok.pos)
        fns = [a.fn for a in args]
        label = name_tok.value

        def run(r: Row) -> Any:
            try:
                return fn(*[f(r) for f in fns])
            except EvalError:
                raise
            except (TypeError, ValueError, AttributeError) as exc:
                raise EvalError(f"{label}(): {exc}") from None

        if len(fns) == 1:
            f0 = fns[0]

            def run(r: Row) -> Any:
                try:
                    return fn(f0(r))
                except EvalError:
                    raise
                except (TypeError, ValueError, AttributeError) as exc:
                    raise EvalError(f"{label}(): {exc}") from None

        return _Node(run)


def _or(a: Compiled, b: Compiled) -> Compiled:
    return lambda r: bool(a(r)) or bool(b(r))


def _and(a: Compiled, b: Compiled) -> Compiled:
    return lambda r: bool(a(r)) and bool(b(r))


def _field(f: Compiled, key: Any) -> Compiled:
    return lambda r: _item(f(r), key)


def _index(f: Compiled, g: Compiled) -> Compiled:
    return lambda r: _item(f(r), g(r))


def _const(value: Any) -> _Node:
    return _Node(lambda _r: value, const=True, value=value)


def _compare(op: str, left: _Node, right: _Node) -> _Node:
    if op in ("==", "!="):
        a, b = left.fn, right.fn
        if right.const:
            c = right.value
            if c is None:
                return (
                    _Node(lambda r: a(r) is None)
                    if op == "=="
                    else _Node(lambda r: a(r) is not None)
                )
            if op == "==":
                return _Node(lambda r: (v := a(r)) is not None and v == c)
            return _Node(lambda r: (v := a(r)) is not None and v != c)
        if op == "==":
            return _Node(lambda r: _eq(a(r), b(r)))
        return _Node(lambda r: not _eq(a(r), b(r)) and a(r) is not None and b(r) is not None)
    fast = _FAST_CMP[op]
    slow = _BINARY[op]
    if left.column is not None and right.const and right.value is not None:
        # The hot shape (column OP constant): one itemgetter, one comparison.
        get, c = left.fn, right.value

        def col_const(r: Row) -> bool:
            v = get(r)
            if v is None:
                return False
            try:
                return bool(fast(v, c))
            except TypeError:
                return bool(slow(v, c))

        numeric = isinstance(c, int | float) and not isinstance(c, bool)
        return _Node(col_const, shape=("cmp", op, left.column, c) if numeric else None)
    a, b = left.fn, right.fn
    return _Node(lambda r: slow(a(r), b(r)))


def _binary(op: str, left: _Node, right: _Node) -> _Node:
    run = _BINARY[op]
    if left.const and right.const:
        try:
            return _const(run(left.value, right.value))
        except EvalError:
            pass
    a, b = left.fn, right.fn
    if right.const and right.value is not None and op in ("+", "-", "*", "/"):
        c = right.value
        fast = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op]
        if isinstance(c, int | float) and not isinstance(c, bool) and (op != "/" or c != 0):

            def num_const(r: Row) -> Any:
                v = a(r)
                if v is None:
                    return None
                if type(v) is int or type(v) is float:
                    return fast(v, c)
                return run(v, c)

            return _Node(num_const)
    if left.column is not None and right.column is not None and op in ("+", "-", "*"):
        fast2 = {"+": operator.add, "-": operator.sub, "*": operator.mul}[op]

        def col_col(r: Row) -> Any:
            x, y = a(r), b(r)
            if (type(x) is int or type(x) is float) and (type(y) is int or type(y) is float):
                return fast2(x, y)
            return run(x, y)

        return _Node(col_col, shape=("arith", op, left.column, right.column))
    return _Node(lambda r: run(a(r), b(r)))


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled expression: call ``fn(row)``; ``columns`` it reads."""

    text: str
    fn: Compiled
    columns: frozenset[str]
    shape: Shape | None = None
    """When set, what ``fn`` computes for numbers (int/float, never bool),
    for a caller that inlines it: ``("cmp", op, column index, number)`` is
    ``row[i] op number`` (op one of < <= > >=), ``("arith", op, i, j)`` is
    ``row[i] op row[j]`` (op one of + - *). Other values need ``fn``."""


def compile_expr(
    text: str, columns: Sequence[str], params: Mapping[str, Any] | None = None
) -> Expression:
    """Compile ``text`` against a row layout (column names in row order).

    ``params`` are the run parameters ``$name`` refers to; None checks the
    syntax only and treats parameters as null.

    Raises:
        ExprError: the text is not a valid expression for these columns.

    Example:
        >>> compile_expr("a * 2 > b", ["a", "b"]).fn([3, 5])
        True
    """
    if not text or not text.strip():
        raise ExprError("empty expression", 0)
    parser = _Parser(text, {c: i for i, c in enumerate(columns)}, params)
    node = parser.parse()
    return Expression(text, node.fn, frozenset(parser.used), node.shape)


def check_syntax(text: str) -> None:
    """Check an expression before its columns are known (any name is a column).

    Raises:
        ExprError: the text is not a valid expression.
    """
    if not text or not text.strip():
        raise ExprError("empty expression", 0)
    _Parser(text, _AnyColumn(), None).parse()
