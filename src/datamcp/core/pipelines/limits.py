"""Range checks for what callers give the pipeline service: every value that
is accepted must be storable in both databases and readable back through
every API (protobuf Structs and Durations included), so the limits are
checked where a request comes in, with field paths, never discovered later.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument

MAX_ID = 128
"""Pipeline ids and names, run ids, request and correlation ids."""
MAX_DESCRIPTION = 4096
MAX_TEXT = 1024
"""Paths, column names, connection names... anything without its own limit."""
MAX_QUERY = 64 * 1024
MAX_SPEC_TEXT = 1024 * 1024
MAX_DEPTH = 24
"""Nesting of JSON values (params, in_list values, cursors): deep enough for
any real use, shallow enough that a protobuf Struct of it (three message
levels per JSON level) stays under protobuf's decoding limit of 100."""
MAX_NODES = 100_000
"""Values in one spec or one set of params, shared YAML aliases counted
every time they are used (so an alias bomb is refused, not expanded)."""
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_INT = 2**63 - 1

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def shorten(value: str, limit: int = 64) -> str:
    """A caller's value as an error may echo it: cut, with its length."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value)} characters)"


def text_problem(value: str, *, limit: int = MAX_TEXT, control: bool = False) -> str | None:
    """What is wrong with a string field, or None. NUL is never allowed (a
    PostgreSQL text column refuses it); other control characters only where
    ``control`` (queries and expressions may span lines)."""
    if len(value) > limit:
        return f"at most {limit} characters (got {len(value)})"
    if "\x00" in value:
        return "must not contain NUL characters"
    if not control and _CONTROL.search(value):
        return "must not contain control characters"
    return None


def check_id(value: str, field: str, *, required: bool = True) -> None:
    """An id or name from a request.

    Raises:
        InvalidArgument: empty (when required), too long or with control characters.
    """
    if not value:
        if required:
            raise InvalidArgument(f"{field} is required", [FieldViolation(field, "required")])
        return
    problem = text_problem(value, limit=MAX_ID)
    if problem is not None:
        raise InvalidArgument(f"invalid {field}", [FieldViolation(field, problem)])


def json_problems(
    value: Any, path: str, *, budget: list[int] | None = None
) -> list[FieldViolation]:
    """Problems with a JSON value: non-finite numbers, integers beyond 64
    bits, keys that are not strings, nesting deeper than :data:`MAX_DEPTH`,
    more than :data:`MAX_NODES` values, strings with NUL characters."""
    problems: list[FieldViolation] = []
    left = budget if budget is not None else [MAX_NODES]

    def walk(v: Any, where: str, depth: int) -> None:
        if problems:
            return
        left[0] -= 1
        if left[0] < 0:
            problems.append(FieldViolation(where, f"more than {MAX_NODES} values in all"))
            return
        if depth > MAX_DEPTH:
            problems.append(FieldViolation(where, f"nested deeper than {MAX_DEPTH} levels"))
        elif isinstance(v, bool) or v is None:
            return
        elif isinstance(v, int):
            if abs(v) > MAX_INT:
                problems.append(FieldViolation(where, "integer out of the 64-bit range"))
        elif isinstance(v, float):
            if not math.isfinite(v):
                problems.append(FieldViolation(where, "NaN and Infinity are not allowed"))
        elif isinstance(v, str):
            if "\x00" in v:
                problems.append(FieldViolation(where, "strings must not contain NUL characters"))
        elif isinstance(v, Mapping):
            for k, item in v.items():
                if not isinstance(k, str):
                    problems.append(FieldViolation(where, "keys must be strings"))
                    return
                walk(item, f"{where}.{k}", depth + 1)
        elif isinstance(v, list | tuple):
            for i, item in enumerate(v):
                walk(item, f"{where}[{i}]", depth + 1)
        else:
            problems.append(FieldViolation(where, f"{type(v).__name__} is not a JSON value"))

    walk(value, path, 0)
    return problems


def check_json(value: Any, field: str) -> None:
    """Raises InvalidArgument with :func:`json_problems`."""
    problems = json_problems(value, field)
    if problems:
        raise InvalidArgument(f"invalid {field}", problems)


def timeout_problem(seconds: Any) -> str | None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "expected seconds (a number)"
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIMEOUT:
        return f"expected seconds from 0 to {MAX_TIMEOUT:g} (7 days; 0 = the server default)"
    return None
