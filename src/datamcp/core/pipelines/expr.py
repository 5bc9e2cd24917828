"""The pipeline expression language: a small, safe language for filters and
derived columns. This module parses it to an AST; :mod:`.exprc` compiles the
AST to the columnar engine's expression objects (never to text the engine
parses, never through ``eval``).

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
arithmetic on null gives null. A type error on a row (``'a' > 1``) rejects
that row with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class ExprError(ValueError):
    """The expression text is invalid; ``position`` is the offending offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position + 1})")
        self.position = position


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

FUNCTIONS: dict[str, tuple[int, int]] = {
    # name: (min args, max args)
    "lower": (1, 1),
    "upper": (1, 1),
    "trim": (1, 1),
    "length": (1, 1),
    "starts_with": (2, 2),
    "ends_with": (2, 2),
    "contains": (2, 2),
    "replace": (3, 3),
    "substr": (2, 3),
    "concat": (1, 32),
    "coalesce": (1, 32),
    "abs": (1, 1),
    "round": (1, 2),
    "floor": (1, 1),
    "ceil": (1, 1),
    "min": (1, 32),
    "max": (1, 32),
    "int": (1, 1),
    "float": (1, 1),
    "str": (1, 1),
    "is_null": (1, 1),
}


# ---- the AST ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lit:
    value: Any


@dataclass(frozen=True, slots=True)
class Col:
    name: str


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "-" or "not"
    arg: Node


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # + - * / // % == != < <= > >= and or in "not in"
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class IsNull:
    arg: Node
    negate: bool


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Item:
    """``x.key`` or ``x[key]``: a lookup in a JSON value (never an attribute)."""

    container: Node
    key: Node


@dataclass(frozen=True, slots=True)
class ListOf:
    items: tuple[Node, ...]


Node = Lit | Col | Param | Unary | Binary | IsNull | Call | Item | ListOf


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # num, str, name, param, op, kw, end
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
            out.append(_Tok("kw" if raw in _KEYWORDS else "name", raw, pos, raw))
        elif kind == "op":
            out.append(_Tok("op", raw, pos, raw))
        pos = m.end()
    out.append(_Tok("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0
        self.columns: dict[str, int] = {}  # name -> first position
        self.params: dict[str, int] = {}

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
            raise ExprError(
                f"expected {text!r}, found {tok.text or 'end of expression'!r}", tok.pos
            )

    def parse(self) -> Node:
        node = self.expr()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {tok.text!r}", tok.pos)
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError("expression nested too deeply", self.peek().pos)
        try:
            return self.or_()
        finally:
            self.depth -= 1

    def or_(self) -> Node:
        node = self.and_()
        while self.accept("kw", "or"):
            node = Binary("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.accept("kw", "and"):
            node = Binary("and", node, self.not_())
        return node

    def not_(self) -> Node:
        if self.accept("kw", "not"):
            return Unary("not", self.not_())
        return self.cmp()

    def cmp(self) -> Node:
        left = self.sum_()
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return Binary(tok.text, left, self.sum_())
        if tok.kind == "kw" and tok.text == "is":
            self.take()
            negate = self.accept("kw", "not")
            if not self.accept("kw", "null"):
                raise ExprError("expected 'null' after 'is'", self.peek().pos)
            return IsNull(left, negate)
        negate = False
        if tok.kind == "kw" and tok.text == "not" and self.toks[self.i + 1].text == "in":
            self.take()
            negate = True
        if self.accept("kw", "in"):
            return Binary("not in" if negate else "in", left, self.sum_())
        if negate:
            raise ExprError("expected 'in' after 'not'", self.peek().pos)
        return left

    def sum_(self) -> Node:
        node = self.prod()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            node = Binary(self.take().text, node, self.prod())
        return node

    def prod(self) -> Node:
        node = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/", "//", "%"):
            node = Binary(self.take().text, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.accept("op", "-"):
            inner = self.unary()
            if isinstance(inner, Lit) and isinstance(inner.value, int | float):
                return Lit(-inner.value)
            return Unary("-", inner)
        return self.postfix()

    def postfix(self) -> Node:
        node = self.atom()
        while True:
            if self.accept("op", "."):
                tok = self.take()
                if tok.kind not in ("name", "kw"):
                    raise ExprError("expected a field name after '.'", tok.pos)
                node = Item(node, Lit(tok.value))
            elif self.accept("op", "["):
                index = self.expr()
                self.expect("op", "]")
                node = Item(node, index)
            else:
                return node

    def args(self, close: str) -> list[Node]:
        out: list[Node] = []
        if self.accept("op", close):
            return out
        while True:
            out.append(self.expr())
            if self.accept("op", close):
                return out
            self.expect("op", ",")

    def atom(self) -> Node:
        tok = self.take()
        if tok.kind in ("num", "str"):
            return Lit(tok.value)
        if tok.kind == "kw" and tok.text in ("true", "false", "null"):
            return Lit({"true": True, "false": False, "null": None}[tok.text])
        if tok.kind == "param":
            self.params.setdefault(tok.value, tok.pos)
            return Param(tok.value, tok.pos)
        if tok.kind == "name":
            if self.peek().kind == "op" and self.peek().text == "(":
                self.take()
                return self.call(tok)
            self.columns.setdefault(tok.value, tok.pos)
            return Col(tok.value)
        if tok.kind == "op" and tok.text == "(":
            node = self.expr()
            self.expect("op", ")")
            return node
        if tok.kind == "op" and tok.text == "[":
            return ListOf(tuple(self.args("]")))
        raise ExprError(f"unexpected {tok.text or 'end of expression'!r}", tok.pos)

    def call(self, name_tok: _Tok) -> Node:
        bounds = FUNCTIONS.get(name_tok.value)
        if bounds is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise ExprError(f"unknown function {name_tok.value!r} (known: {known})", name_tok.pos)
        lo, hi = bounds
        args = self.args(")")
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ExprError(f"{name_tok.value}() takes {want} arguments", name_tok.pos)
        return Call(name_tok.value, tuple(args))


@dataclass(frozen=True, slots=True)
class Parsed:
    """An expression's AST with the columns and parameters it names (and
    where each first appears, for error positions)."""

    text: str
    root: Node
    columns: dict[str, int]
    params: dict[str, int]


def parse(text: str) -> Parsed:
    """Parse an expression.

    Raises:
        ExprError: the text is not a valid expression.

    Example:
        >>> parse("a * 2 > b").columns
        {'a': 0, 'b': 8}
    """
    if not text or not text.strip():
        raise ExprError("empty expression", 0)
    parser = _Parser(text)
    root = parser.parse()
    return Parsed(text, root, parser.columns, parser.params)


def check_syntax(text: str) -> None:
    """Check an expression before its columns are known.

    Raises:
        ExprError: the text is not a valid expression.
    """
    parse(text)
