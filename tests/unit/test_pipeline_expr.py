"""The pipeline expression language compiled to the engine: values, null
semantics, per-row errors as rejects, and safety of the text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from datamcp.core.pipelines.expr import ExprError, check_syntax, parse
from tests.unit.pipeline_fakes import run

COLS = ["a", "b", "name", "data"]


def ev(text: str, row: list[Any], params: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The value of ``text`` on ``row`` (and the reject reason, if any)."""
    out, rejects, _ = run(
        [{"derive": {"column": "v", "expr": text}}], COLS, [row], params=params or {}, size=1
    )
    if rejects:
        return None, rejects[0].reason
    value = out.rows[0][-1]
    if out.kinds[-1] == "json" and value is not None:
        value = json.loads(value)
    return value, ""


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("a + b * 2", [1, 3, "", None], 7),
        ("(a + b) * 2", [1, 3, "", None], 8),
        ("a / b", [3, 2, "", None], 1.5),
        ("a // b", [7, 2, "", None], 3),
        ("-a % 3", [4, 0, "", None], 2),
        ("a > 1 and b <= 3 or false", [2, 3, "", None], True),
        ("not a == 2", [2, 0, "", None], False),
        ("name in ['x', 'y']", [0, 0, "y", None], True),
        ("name not in ['x', 'y']", [0, 0, "z", None], True),
        ("'ell' in name", [0, 0, "hello", None], True),
        ("lower(name) == 'abc'", [0, 0, "ABC", None], True),
        ("concat(name, '-', a)", [5, 0, "n", None], "n-5"),
        ("coalesce(data, 'none')", [0, 0, "", None], "none"),
        ("data.k.z", [0, 0, "", {"k": {"z": 9}}], 9),
        ("data['k']", [0, 0, "", {"k": 1}], 1),
        ("substr(name, 2, 2)", [0, 0, "hello", None], "el"),
        ('`name` == "it\'s"', [0, 0, "it's", None], True),
        ("a is null", [None, 0, "", None], True),
        ("a is not null", [None, 0, "", None], False),
        ("round(a * 1.005, 2)", [10, 0, "", None], 10.05),
        ("$limit > a", [1, 0, "", None], True),
        ("int('3') + float(name)", [0, 0, "2.5", None], 5.5),
        ("max(a, b) - min(a, b)", [3, 9, "", None], 6),
        ("length(name) + abs(-a)", [2, 0, "abc", None], 5),
    ],
)
def test_evaluates(text: str, row: list[Any], expected: Any) -> None:
    assert ev(text, row, {"limit": 5}) == (expected, "")


def test_null_compares_false_and_propagates_through_arithmetic() -> None:
    row = [None, 1, "", None]
    assert ev("a > 0", row) == (False, "")
    assert ev("a < 0", row) == (False, "")
    assert ev("a == null", row) == (True, "")
    assert ev("a + 1", row) == (None, "")
    assert ev("a != 1", row) == (False, "")  # unknown, like SQL


@pytest.mark.parametrize(
    ("text", "row", "reason"),
    [
        ("name > 1", [0, 0, "x", None], "cannot compare str > int"),
        ("a / b", [1, 0, "", None], "division by zero"),
        ("name + a", [1, 0, "x", None], "cannot compute str + int"),
        ("int(name)", [0, 0, "3.5", None], "int(3.5): not integer"),
        ("a * b", [2**62, 4, "", None], "integer overflow"),
        ("b != 0 and a / b > 1", [1, 0, "", None], ""),  # the right side is not evaluated
    ],
)
def test_type_errors_reject_the_row(text: str, row: list[Any], reason: str) -> None:
    _value, why = ev(text, row)
    assert reason in why if reason else why == ""


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a >", "end of expression"),
        ("__import__('os')", "unknown function"),
        ("open('x')", "unknown function"),
        ("a ; b", "unexpected character"),
        ("lower(a, b)", "takes 1 arguments"),
        ("(" * 100 + "a" + ")" * 100, "nested too deeply"),
    ],
)
def test_rejects_bad_or_unsafe_text(text: str, where: str) -> None:
    with pytest.raises(ExprError, match=where):
        parse(text)


def test_unknown_columns_and_parameters_fail_at_bind() -> None:
    from datamcp.core.pipelines.ports import PermanentError

    for text, where in (("missing > 1", "unknown column"), ("$nope", "unknown parameter")):
        with pytest.raises(PermanentError, match=where):
            ev(text, [1, 0, "", None])


def test_attribute_access_is_a_key_lookup_never_getattr() -> None:
    assert ev("data.__class__", [1, 0, "", {"k": 1}]) == (None, "")


def test_syntax_check_accepts_any_column_name() -> None:
    check_syntax("whatever > 1 and other == 'x'")
    with pytest.raises(ExprError):
        check_syntax("whatever >")
