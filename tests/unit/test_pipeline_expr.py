"""The pipeline expression language: parsing, null semantics, safety."""

from __future__ import annotations

from typing import Any

import pytest

from datamcp.core.pipelines.expr import EvalError, ExprError, check_syntax, compile_expr

COLS = ["a", "b", "name", "data"]


def ev(text: str, row: list[Any], params: dict[str, Any] | None = None) -> Any:
    return compile_expr(text, COLS, params or {}).fn(row)


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
    ],
)
def test_evaluates(text: str, row: list[Any], expected: Any) -> None:
    assert ev(text, row, {"limit": 5}) == expected


def test_null_compares_false_and_propagates_through_arithmetic() -> None:
    row = [None, 1, "", None]
    assert ev("a > 0", row) is False
    assert ev("a < 0", row) is False
    assert ev("a == null", row) is True
    assert ev("a + 1", row) is None
    assert ev("a != 1", row) is False  # unknown, like SQL


@pytest.mark.parametrize(
    ("text", "row"),
    [("name > 1", [0, 0, "x", None]), ("a / b", [1, 0, "", None]), ("name + a", [1, 0, "x", None])],
)
def test_type_errors_raise_eval_error(text: str, row: list[Any]) -> None:
    with pytest.raises(EvalError):
        ev(text, row)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a >", "end of expression"),
        ("__import__('os')", "unknown function"),
        ("a.__class__", None),
        ("open('x')", "unknown function"),
        ("missing > 1", "unknown column"),
        ("a ; b", "unexpected character"),
        ("lower(a, b)", "takes 1 arguments"),
        ("$nope", "unknown parameter"),
        ("(" * 100 + "a" + ")" * 100, "nested too deeply"),
    ],
)
def test_rejects_bad_or_unsafe_text(text: str, where: str | None) -> None:
    if where is None:  # attribute access is a key lookup on mappings, never getattr
        assert ev(text, [1, 0, "", None]) is None
        return
    with pytest.raises(ExprError, match=where):
        compile_expr(text, COLS, {})


def test_syntax_check_accepts_any_column_name() -> None:
    check_syntax("whatever > 1 and other == 'x'")
    with pytest.raises(ExprError):
        check_syntax("whatever >")
