"""The pipeline spec: parsed from YAML/JSON (or the protobuf's dict form),
validated with field-level problems, normalized to one canonical dict.

The canonical form is what is stored and returned: ``{"source": {kind:
options}, "transforms": [{kind: options}, ...], "destination": {kind:
options}, ...}`` with every option spelled out. Checks that need the
server's configuration (data roots, connection names, APIs) are done by the
connectors (:class:`~datamcp.core.pipelines.ports.Connectors.check`); checks
that need the source's columns are done when a run (or preview) binds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from croniter import croniter

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.events.model import EventFilter
from datamcp.core.pipelines.expr import MAX_LENGTH as MAX_EXPR
from datamcp.core.pipelines.expr import ExprError, check_syntax
from datamcp.core.pipelines.limits import (
    MAX_QUERY,
    MAX_SPEC_TEXT,
    MAX_TEXT,
    json_problems,
    text_problem,
    timeout_problem,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,127}$")
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TYPES = ("string", "integer", "float", "boolean", "timestamp", "json")
SOURCE_KINDS = ("csv", "jsonl", "sql", "http", "s3", "events")
TRANSFORM_KINDS = (
    "filter",
    "select",
    "rename",
    "drop",
    "cast",
    "derive",
    "validate",
    "dedupe",
    "aggregate",
    "sort",
    "lookup",
)
DESTINATION_KINDS = ("table", "csv", "jsonl", "s3")
AGG_OPS = ("count", "sum", "avg", "min", "max")
MAX_BATCH = 100_000
MAX_TRANSFORMS = 100


@dataclass(frozen=True, slots=True)
class Part:
    """One source, transform or destination: its kind and normalized options."""

    kind: str
    options: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: dict(self.options)}


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    source: Part
    destination: Part
    transforms: tuple[Part, ...] = ()
    schedule: str = ""
    triggers: tuple[Mapping[str, Any], ...] = ()
    incremental: Mapping[str, Any] | None = None
    timeout: float = 0.0  # 0 = server default
    batch_size: int = 0  # 0 = server default
    max_rejects: int = 0  # 0 = no limit
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source.to_dict(),
            "transforms": [t.to_dict() for t in self.transforms],
            "destination": self.destination.to_dict(),
        }
        if self.schedule:
            out["schedule"] = self.schedule
        if self.triggers:
            out["triggers"] = [dict(t) for t in self.triggers]
        if self.incremental is not None:
            out["incremental"] = dict(self.incremental)
        if self.timeout:
            out["timeout"] = self.timeout
        if self.batch_size:
            out["batch_size"] = self.batch_size
        if self.max_rejects:
            out["max_rejects"] = self.max_rejects
        if self.params:
            out["params"] = dict(self.params)
        return out

    def trigger_filters(self) -> list[EventFilter]:
        return [
            EventFilter.build(list(t["types"]), t.get("source", ""), t.get("subject", ""))
            for t in self.triggers
        ]


@dataclass(frozen=True, slots=True)
class Document:
    """A spec file: optional name and description plus the spec."""

    name: str
    description: str
    spec: PipelineSpec


class _Checker:
    """Reads a raw mapping, collecting problems with their field paths."""

    def __init__(self) -> None:
        self.problems: list[FieldViolation] = []

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
            self.fail(f"{path}.{key}", f"expected a string, got {_kind(value)}")
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


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# ---- sources ----------------------------------------------------------------------


def _source(c: _Checker, raw: Any, path: str) -> Part | None:  # noqa: PLR0915
    picked = c.one_of(raw, path, SOURCE_KINDS)
    if picked is None:
        return None
    kind, options = picked
    path = f"{path}.{kind}"
    if kind in ("csv", "jsonl") and isinstance(options, str):
        options = {"path": options}
    o = c.mapping(options, path)
    if o is None:
        return None
    out: dict[str, Any] = {}
    if kind in ("csv", "jsonl"):
        known = ("path", "delimiter", "no_header", "columns")
        c.unknown(o, path, known if kind == "csv" else ("path", "columns"))
        out["path"] = c.string(o, "path", path, required=True)
        out["columns"] = c.names(o.get("columns"), f"{path}.columns")
        if kind == "csv":
            out["delimiter"] = _delimiter(c, o, path)
            out["no_header"] = c.boolean(o, "no_header", path)
            if out["no_header"] and not out["columns"]:
                c.fail(f"{path}.columns", "required when no_header is true")
    elif kind == "sql":
        c.unknown(o, path, ("connection", "query", "params"))
        out["connection"] = c.string(o, "connection", path, required=True)
        query = c.string(o, "query", path, required=True, limit=MAX_QUERY, control=True)
        if query and not re.match(r"^\s*(select|with)\b", query, re.IGNORECASE):
            c.fail(f"{path}.query", "only SELECT or WITH queries are allowed")
        out["query"] = query
        params = c.mapping(o.get("params"), f"{path}.params")
        out["params"] = dict(params or {})
    elif kind == "http":
        c.unknown(o, path, ("api", "path", "query", "records", "pagination", "columns"))
        out["api"] = c.string(o, "api", path, required=True)
        out["path"] = c.string(o, "path", path)
        out["query"] = c.str_map(o.get("query"), f"{path}.query")
        out["records"] = c.string(o, "records", path)
        out["pagination"] = _pagination(c, o.get("pagination"), f"{path}.pagination")
        out["columns"] = c.names(o.get("columns"), f"{path}.columns")
    elif kind == "s3":
        c.unknown(o, path, ("bucket", "key", "format", "delimiter", "columns"))
        out["bucket"] = c.string(o, "bucket", path, required=True)
        out["key"] = c.string(o, "key", path, required=True)
        out["format"] = _format(c, o, path, out["key"])
        out["delimiter"] = _delimiter(c, o, path)
        out["columns"] = c.names(o.get("columns"), f"{path}.columns")
    else:  # events
        c.unknown(o, path, ("types", "source", "subject"))
        types = o.get("types", [])
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            c.fail(f"{path}.types", "expected a list of event types")
            types = []
        out["types"] = list(types)
        out["source"] = c.string(o, "source", path)
        out["subject"] = c.string(o, "subject", path)
        c.event_filter(out, path)
    return Part(kind, out)


def _delimiter(c: _Checker, o: Mapping[str, Any], path: str) -> str:
    value = c.string(o, "delimiter", path) or ","
    if len(value) != 1:
        c.fail(f"{path}.delimiter", "must be one character")
        return ","
    return value


def _format(c: _Checker, o: Mapping[str, Any], path: str, key: str) -> str:
    value = c.string(o, "format", path)
    if not value:
        value = "jsonl" if key.endswith((".jsonl", ".ndjson", ".json")) else "csv"
    if value not in ("csv", "jsonl"):
        c.fail(f"{path}.format", "must be csv or jsonl")
        return "csv"
    return value


def _pagination(c: _Checker, raw: Any, path: str) -> dict[str, Any]:
    o = c.mapping(raw, path) or {}
    c.unknown(
        o,
        path,
        ("type", "param", "size_param", "page_size", "start", "cursor_path", "max_pages"),
    )
    kind = c.choice(o, "type", path, ("none", "page", "offset", "cursor"))
    out = {
        "type": kind,
        "param": c.string(o, "param", path)
        or {"page": "page", "offset": "offset", "cursor": "cursor"}.get(kind, ""),
        "size_param": c.string(o, "size_param", path),
        "page_size": c.integer(o, "page_size", path, 100, 1, 10_000),
        "start": c.integer(o, "start", path, 1 if kind == "page" else 0, 0, 2**62),
        "cursor_path": c.string(o, "cursor_path", path),
        "max_pages": c.integer(o, "max_pages", path, 10_000, 1, 1_000_000),
    }
    if kind == "cursor" and not out["cursor_path"]:
        c.fail(f"{path}.cursor_path", "required for cursor pagination")
    return out


# ---- transforms ------------------------------------------------------------------


def _transform(c: _Checker, raw: Any, path: str) -> Part | None:
    picked = c.one_of(raw, path, TRANSFORM_KINDS)
    if picked is None:
        return None
    kind, o = picked
    path = f"{path}.{kind}"
    handler = _TRANSFORMS[kind]
    out = handler(c, o, path)
    return None if out is None else Part(kind, out)


def _t_filter(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, str):
        o = {"expr": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("expr",))
    return {"expr": c.expr(m, "expr", path)}


def _t_columns(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, list):
        o = {"columns": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("columns",))
    return {"columns": c.names(m.get("columns"), f"{path}.columns", required=True)}


def _long_form(o: Any) -> Any:
    """``{columns: {...}}`` or the shorthand ``{a: b, ...}``."""
    if isinstance(o, Mapping) and set(o) == {"columns"} and isinstance(o["columns"], Mapping):
        return o["columns"]
    return o


def _t_rename(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    mapping = c.str_map(_long_form(o), f"{path}.columns")
    if not mapping:
        c.fail(f"{path}.columns", "required: old name: new name")
    elif len(set(mapping.values())) != len(mapping):
        c.fail(f"{path}.columns", "two columns cannot get the same new name")
    return {"columns": mapping}


def _t_cast(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    mapping = c.str_map(_long_form(o), f"{path}.columns", values=TYPES)
    if not mapping:
        c.fail(f"{path}.columns", f"required: column: type ({', '.join(TYPES)})")
    return {"columns": mapping}


def _t_derive(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("column", "expr"))
    return {"column": c.string(m, "column", path, required=True), "expr": c.expr(m, "expr", path)}


def _t_validate(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("not_null", "unique", "range", "regex", "in_list", "schema"))
    out: dict[str, Any] = {
        "not_null": c.names(m.get("not_null"), f"{path}.not_null"),
        "unique": c.names(m.get("unique"), f"{path}.unique"),
        "regex": c.str_map(m.get("regex"), f"{path}.regex"),
        "schema": c.str_map(m.get("schema"), f"{path}.schema", values=TYPES),
    }
    for col, pattern in out["regex"].items():
        try:
            re.compile(pattern)
        except re.error as exc:
            c.fail(f"{path}.regex.{col}", f"invalid regular expression: {exc}")
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


def _t_dedupe(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, list):
        o = {"keys": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("keys",))
    return {"keys": c.names(m.get("keys"), f"{path}.keys")}


def _t_aggregate(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("group_by", "aggregations"))
    group_by = c.names(m.get("group_by"), f"{path}.group_by")
    raw = m.get("aggregations")
    aggs: list[dict[str, str]] = []
    if not isinstance(raw, list) or not raw:
        c.fail(f"{path}.aggregations", "required: a list of {output, op, column}")
        raw = []
    for i, item in enumerate(raw):
        where = f"{path}.aggregations[{i}]"
        a = c.mapping(item, where)
        if a is None:
            continue
        c.unknown(a, where, ("output", "op", "column"))
        op = c.string(a, "op", where, required=True)
        if op and op not in AGG_OPS:
            c.fail(f"{where}.op", f"must be one of {', '.join(AGG_OPS)}")
        column = c.string(a, "column", where, required=op not in ("count", ""))
        output = c.string(a, "output", where) or (f"{op}_{column}" if column else op)
        aggs.append({"output": output, "op": op, "column": column})
    outputs = group_by + [a["output"] for a in aggs]
    if len(set(outputs)) != len(outputs):
        c.fail(f"{path}.aggregations", "output names must differ from each other and group_by")
    return {"group_by": group_by, "aggregations": aggs}


def _t_sort(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    if isinstance(o, list):
        o = {"keys": o}
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("keys",))
    raw = m.get("keys")
    keys: list[dict[str, Any]] = []
    if not isinstance(raw, list) or not raw:
        c.fail(f"{path}.keys", "required: a list of columns ('-col' for descending)")
        raw = []
    for i, item in enumerate(raw):
        if isinstance(item, str) and item.strip("-"):
            keys.append({"column": item.lstrip("-"), "descending": item.startswith("-")})
        elif isinstance(item, Mapping) and isinstance(item.get("column"), str) and item["column"]:
            keys.append({"column": item["column"], "descending": bool(item.get("descending"))})
        else:
            c.fail(f"{path}.keys[{i}]", "expected 'col', '-col' or {column, descending}")
    return {"keys": keys}


def _t_lookup(c: _Checker, o: Any, path: str) -> dict[str, Any] | None:
    m = c.mapping(o, path)
    if m is None:
        return None
    c.unknown(m, path, ("source", "on", "columns", "how"))
    source = _source(c, m.get("source"), f"{path}.source")
    on = c.str_map(m.get("on"), f"{path}.on")
    if not on:
        c.fail(f"{path}.on", "required: column: lookup column")
    return {
        "source": source.to_dict() if source else {},
        "on": on,
        "columns": c.names(m.get("columns"), f"{path}.columns"),
        "how": c.choice(m, "how", path, ("left", "inner")),
    }


_TRANSFORMS: dict[str, Callable[[_Checker, Any, str], dict[str, Any] | None]] = {
    "filter": _t_filter,
    "select": _t_columns,
    "drop": _t_columns,
    "rename": _t_rename,
    "cast": _t_cast,
    "derive": _t_derive,
    "validate": _t_validate,
    "dedupe": _t_dedupe,
    "aggregate": _t_aggregate,
    "sort": _t_sort,
    "lookup": _t_lookup,
}


# ---- destination -----------------------------------------------------------------


def _destination(c: _Checker, raw: Any, path: str) -> Part | None:
    picked = c.one_of(raw, path, DESTINATION_KINDS)
    if picked is None:
        return None
    kind, options = picked
    path = f"{path}.{kind}"
    if kind in ("csv", "jsonl") and isinstance(options, str):
        options = {"path": options}
    o = c.mapping(options, path)
    if o is None:
        return None
    out: dict[str, Any] = {}
    if kind == "table":
        c.unknown(o, path, ("connection", "table", "mode", "keys", "contract"))
        out["connection"] = c.string(o, "connection", path, required=True)
        table = c.string(o, "table", path, required=True)
        if table and not IDENT_RE.match(table):
            c.fail(f"{path}.table", "letters, digits and _ only, starting with a letter or _")
        out["table"] = table
        out["mode"] = c.choice(o, "mode", path, ("append", "replace", "merge"))
        out["keys"] = c.names(o.get("keys"), f"{path}.keys", ident=True)
        out["contract"] = c.choice(o, "contract", path, ("evolve", "freeze"))
        if out["mode"] == "merge" and not out["keys"]:
            c.fail(f"{path}.keys", "required for mode merge (the primary key)")
    elif kind in ("csv", "jsonl"):
        c.unknown(o, path, ("path", "delimiter") if kind == "csv" else ("path",))
        out["path"] = c.string(o, "path", path, required=True)
        if kind == "csv":
            out["delimiter"] = _delimiter(c, o, path)
    else:
        c.unknown(o, path, ("bucket", "key", "format"))
        out["bucket"] = c.string(o, "bucket", path, required=True)
        out["key"] = c.string(o, "key", path, required=True)
        out["format"] = _format(c, o, path, out["key"])
    return Part(kind, out)


# ---- whole spec ------------------------------------------------------------------

_TOP = (
    "source",
    "transforms",
    "destination",
    "schedule",
    "triggers",
    "incremental",
    "timeout",
    "batch_size",
    "max_rejects",
    "params",
)


def parse_spec(raw: Any, prefix: str = "") -> PipelineSpec:
    """Validate and normalize a spec given as plain data.

    Raises:
        InvalidArgument: every problem, each with its field path (under ``prefix``).
    """
    c = _Checker()
    spec = _parse(c, raw)
    if c.problems or spec is None:
        raise InvalidArgument(
            f"invalid pipeline spec: {len(c.problems)} problem(s)",
            [FieldViolation(prefix + p.field, p.description) for p in c.problems],
            reason="INVALID_PIPELINE",
        )
    return spec


def _parse(c: _Checker, raw: Any) -> PipelineSpec | None:  # noqa: PLR0915
    if not isinstance(raw, Mapping):
        c.fail("spec", "expected a mapping with source, transforms and destination")
        return None
    # Values anywhere in the spec (params, in_list values, cursors...) must
    # survive JSON storage and protobuf Structs both ways.
    for p in json_problems(raw, ""):
        c.fail(p.field.lstrip("."), _json_hint(p.description))
    if c.problems:
        return None
    c.unknown(raw, "", _TOP)
    c.problems = [FieldViolation(p.field.lstrip("."), p.description) for p in c.problems]
    source = _source(c, raw.get("source"), "source") if "source" in raw else None
    if "source" not in raw:
        c.fail("source", "required")
    destination = None
    if "destination" not in raw:
        c.fail("destination", "required")
    else:
        destination = _destination(c, raw.get("destination"), "destination")
    transforms: list[Part] = []
    raw_t = raw.get("transforms") or []
    if not isinstance(raw_t, list):
        c.fail("transforms", "expected a list")
        raw_t = []
    if len(raw_t) > MAX_TRANSFORMS:
        c.fail("transforms", f"at most {MAX_TRANSFORMS} transforms")
    for i, item in enumerate(raw_t[:MAX_TRANSFORMS]):
        t = _transform(c, item, f"transforms[{i}]")
        if t is not None:
            transforms.append(t)
    schedule = c.string(raw, "schedule", "", limit=256).strip()
    if schedule and (len(schedule.split()) not in (5, 6) or not croniter.is_valid(schedule)):
        c.fail(
            "schedule",
            "expected a cron expression: 5 fields, for example '*/15 * * * *' "
            "(a 6th field, seconds, may follow)",
        )
    elif schedule and _never_fires(schedule):
        c.fail("schedule", "this cron expression never fires (a day that does not exist?)")
    triggers: list[dict[str, Any]] = []
    raw_tr = raw.get("triggers") or []
    if not isinstance(raw_tr, list):
        c.fail("triggers", "expected a list of {types, source, subject}")
        raw_tr = []
    if len(raw_tr) > 8:
        c.fail("triggers", "at most 8 triggers")
        raw_tr = raw_tr[:8]
    for i, item in enumerate(raw_tr):
        where = f"triggers[{i}]"
        m = c.mapping(item, where)
        if m is None:
            continue
        c.unknown(m, where, ("types", "source", "subject"))
        types = m.get("types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            c.fail(f"{where}.types", "required: a list of event types ('prefix.*' allowed)")
            continue
        trig: dict[str, Any] = {
            "types": list(types),
            "source": c.string(m, "source", where),
            "subject": c.string(m, "subject", where),
        }
        c.event_filter(trig, where)
        triggers.append(trig)
    incremental = None
    if raw.get("incremental") is not None:
        m = c.mapping(raw["incremental"], "incremental")
        if m is not None:
            c.unknown(m, "incremental", ("column", "initial"))
            initial = m.get("initial")
            if not (initial is None or isinstance(initial, str | int | float)):
                c.fail("incremental.initial", "expected a number or a string")
                initial = None
            incremental = {
                "column": c.string(m, "column", "incremental", required=True),
                "initial": initial,
            }
    timeout = raw.get("timeout", 0) or 0
    problem = timeout_problem(timeout)
    if problem is not None:
        c.fail("timeout", problem)
        timeout = 0
    params = c.mapping(raw.get("params"), "params")
    batch_size = c.integer(raw, "batch_size", "", 0, 0, MAX_BATCH)
    max_rejects = c.integer(raw, "max_rejects", "", 0, 0, 2**62)
    c.problems = [FieldViolation(p.field.lstrip("."), p.description) for p in c.problems]
    if source is None or destination is None:
        return None
    return PipelineSpec(
        source=source,
        destination=destination,
        transforms=tuple(transforms),
        schedule=schedule,
        triggers=tuple(triggers),
        incremental=incremental,
        timeout=float(timeout),
        batch_size=batch_size,
        max_rejects=max_rejects,
        params=dict(params or {}),
    )


def _json_hint(description: str) -> str:
    if "date is not" in description or "datetime is not" in description:
        return "a date or time must be quoted text (YAML reads it as a date)"
    return description


def _never_fires(schedule: str) -> bool:
    try:
        croniter(schedule, 0.0).get_next(float)
    except Exception:  # croniter's own errors: no next slot
        return True
    return False


def load_text(text: str) -> Any:
    """Parse YAML (JSON is YAML too) with the safe loader.

    Raises:
        InvalidArgument: the text is not YAML/JSON, or is over 1 MiB.
    """
    if len(text) > MAX_SPEC_TEXT:
        raise InvalidArgument(
            "spec_text is too long",
            [FieldViolation("spec_text", f"at most {MAX_SPEC_TEXT} characters")],
            reason="INVALID_PIPELINE",
        )
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise InvalidArgument(
            f"spec_text is not valid YAML or JSON{at}",
            [FieldViolation("spec_text", f"not valid YAML or JSON{at}: {exc}")],
            reason="INVALID_PIPELINE",
        ) from None


def parse_document(raw: Any, prefix: str = "") -> Document:
    """A spec file: the spec's fields plus optional ``name`` and ``description``.

    Raises:
        InvalidArgument: with every problem found.
    """
    if not isinstance(raw, Mapping):
        raise InvalidArgument(
            "a pipeline file holds a mapping",
            [FieldViolation(prefix or "spec", "expected a mapping with source and destination")],
            reason="INVALID_PIPELINE",
        )
    problems: list[FieldViolation] = []
    name = raw.get("name", "")
    if name and (not isinstance(name, str) or not NAME_RE.match(name)):
        problems.append(FieldViolation(prefix + "name", NAME_HELP))
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(FieldViolation(prefix + "description", "expected a string"))
        description = ""
    body = {k: v for k, v in raw.items() if k not in ("name", "description")}
    try:
        spec = parse_spec(body, prefix)
    except InvalidArgument as exc:
        raise InvalidArgument(
            exc.message, [*problems, *exc.violations], reason="INVALID_PIPELINE"
        ) from None
    if problems:
        raise InvalidArgument("invalid pipeline", problems, reason="INVALID_PIPELINE")
    return Document(str(name or ""), description, spec)


NAME_HELP = "lower-case letters, digits, '-', '_' and '.', starting with a letter (max 128)"
