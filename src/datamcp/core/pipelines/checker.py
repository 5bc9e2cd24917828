"""Reads a raw spec mapping, collecting problems with their field paths:
the helpers every kind's ``parse`` uses."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.events.model import EventFilter
from datamcp.core.pipelines.expr import MAX_LENGTH as MAX_EXPR
from datamcp.core.pipelines.expr import ExprError, check_syntax
from datamcp.core.pipelines.limits import MAX_TEXT, text_problem

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TYPES = ("string", "integer", "float", "boolean", "timestamp", "json")


class Checker:
    """Reads a raw mapping, collecting problems with their field paths."""

    def __init__(self, parse_source: Any = None) -> None:
        self.problems: list[FieldViolation] = []
        # How a nested source (a lookup's) is read: set by the spec parser.
        self.parse_source: Any = parse_source

    def fail(self, path: str, message: str) -> None:
        self.problems.append(FieldViolation(path, message))

    def mapping(self, raw: Any, path: str) -> Mapping[str, Any] | None:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.fail(path, "expected a mapping (key: value)")
            return None
        return raw

    def unknown(self, raw: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
        for key in raw:
            if key not in known:
                self.fail(f"{path}.{key}", f"unknown field (known: {', '.join(known)})")

    def string(
        self,
        raw: Mapping[str, Any],
        key: str,
        path: str,
        *,
        required: bool = False,
        limit: int = MAX_TEXT,
        control: bool = False,
    ) -> str:
        value = raw.get(key)
        if value is None or value == "":
            if required:
                self.fail(f"{path}.{key}", "required")
            return ""
        if not isinstance(value, str):
            self.fail(f"{path}.{key}", f"expected a string, got {kind_name(value)}")
            return ""
        problem = text_problem(value, limit=limit, control=control)
        if problem is not None:
            self.fail(f"{path}.{key}", problem)
            return ""
        return value

    def choice(self, raw: Mapping[str, Any], key: str, path: str, choices: tuple[str, ...]) -> str:
        value = self.string(raw, key, path) or choices[0]
        if value not in choices:
            self.fail(f"{path}.{key}", f"must be one of {', '.join(choices)}")
            return choices[0]
        return value

    def boolean(self, raw: Mapping[str, Any], key: str, path: str) -> bool:
        value = raw.get(key, False)
        if not isinstance(value, bool):
            self.fail(f"{path}.{key}", "expected true or false")
            return False
        return value

    def integer(  # noqa: PLR0917 - (where, default, range) reads best positionally
        self, raw: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int
    ) -> int:
        value = raw.get(key)
        if value is None:
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(f"{path}.{key}", f"expected a whole number from {lo} to {hi}")
            return default
        return value

    def names(
        self, raw: Any, path: str, *, required: bool = False, ident: bool = False
    ) -> list[str]:
        if raw is None or raw == []:
            if required:
                self.fail(path, "required: a list of column names")
            return []
        if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
            self.fail(path, "expected a list of column names")
            return []
        for i, name in enumerate(raw):
            problem = text_problem(name)
            if problem is not None:
                self.fail(f"{path}[{i}]", problem)
                return []
        if len(set(raw)) != len(raw):
            self.fail(path, "names must not repeat")
        if ident:
            for i, name in enumerate(raw):
                if not IDENT_RE.match(name):
                    self.fail(f"{path}[{i}]", "letters, digits and _ only (SQL identifier)")
        return list(raw)

    def str_map(self, raw: Any, path: str, *, values: tuple[str, ...] = ()) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()
        ):
            self.fail(path, "expected a mapping of name: string")
            return {}
        for k, v in raw.items():
            problem = text_problem(k) or text_problem(v)
            if problem is not None:
                self.fail(f"{path}.{k[:64]}", problem)
                return {}
        if values:
            for k, v in raw.items():
                if v not in values:
                    self.fail(f"{path}.{k}", f"must be one of {', '.join(values)}")
        return dict(raw)

    def expr(self, raw: Mapping[str, Any], key: str, path: str) -> str:
        text = self.string(raw, key, path, required=True, limit=MAX_EXPR, control=True)
        if text:
            try:
                check_syntax(text)
            except ExprError as exc:
                self.fail(f"{path}.{key}", str(exc))
        return text

    def event_filter(self, out: Mapping[str, Any], path: str) -> None:
        """Checks ``types`` (patterns), ``source`` and ``subject`` of an event filter."""
        for i, pattern in enumerate(out["types"]):
            problem = text_problem(pattern, limit=256)
            if problem is not None:
                self.fail(f"{path}.types[{i}]", problem)
                return
        try:
            EventFilter.build(out["types"], out["source"], out["subject"])
        except InvalidArgument as exc:
            self.fail(f"{path}.types", exc.message)

    def one_of(self, raw: Any, path: str, kinds: tuple[str, ...]) -> tuple[str, Any] | None:
        """A ``{kind: options}`` mapping with exactly one known kind."""
        if not isinstance(raw, Mapping) or len(raw) != 1:
            self.fail(path, f"expected exactly one of: {', '.join(kinds)}")
            return None
        kind, options = next(iter(raw.items()))
        if kind not in kinds:
            self.fail(path, f"unknown kind {kind!r} (known: {', '.join(kinds)})")
            return None
        return str(kind), options


def kind_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def long_form(o: Any) -> Any:
    """``{columns: {...}}`` or the shorthand ``{a: b, ...}``."""
    if isinstance(o, Mapping) and set(o) == {"columns"} and isinstance(o["columns"], Mapping):
        return o["columns"]
    return o


def file_options(c: Checker, raw: Any, path: str) -> Mapping[str, Any] | None:
    """A file kind's options: a mapping, or the shorthand ``kind: path``."""
    return c.mapping({"path": raw} if isinstance(raw, str) else raw, path)


def delimiter(c: Checker, o: Mapping[str, Any], path: str) -> str:
    return char(c, o, "delimiter", path, ",")


def char(c: Checker, o: Mapping[str, Any], key: str, path: str, default: str) -> str:
    value = c.string(o, key, path) or default
    if len(value) != 1 or value in "\r\n":
        c.fail(f"{path}.{key}", "must be one character (not a line break)")
        return default
    return value


def null_values(c: Checker, o: Mapping[str, Any], path: str) -> list[str]:
    raw = o.get("null_values", [])
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw) or len(raw) > 32:
        c.fail(f"{path}.null_values", "expected a list of texts read as null (at most 32)")
        return []
    return list(raw)


def file_format(c: Checker, o: Mapping[str, Any], path: str, key: str) -> str:
    """``csv`` or ``jsonl``: given, or from the object key's extension."""
    value = c.string(o, "format", path)
    if not value:
        value = "jsonl" if key.endswith((".jsonl", ".ndjson", ".json")) else "csv"
    if value not in ("csv", "jsonl"):
        c.fail(f"{path}.format", "must be csv or jsonl")
        return "csv"
    return value
