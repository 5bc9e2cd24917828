"""Spec validation and every transform kind through the engine (DuckDB over
Arrow), with in-memory rows: values, rejects with reasons, counters."""

from __future__ import annotations

from typing import Any

import pytest

from datamcp.core.errors import InvalidArgument
from datamcp.core.pipelines.ports import PermanentError
from datamcp.core.pipelines.spec import load_text, parse_document, parse_spec
from datamcp.core.pipelines.transforms import KINDS
from tests.unit.pipeline_fakes import run

BASE = {"source": {"csv": "in.csv"}, "destination": {"jsonl": "out.jsonl"}}


def test_spec_problems_have_field_paths() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_spec(
            {
                "source": {"ftp": {}},
                "transforms": [{"derive": {"column": "x"}}, {"sort": [1]}, {"aggregate": {}}],
                "destination": {"table": {"table": "t"}},
                "batch_size": 0.5,
                "extra": 1,
            }
        )
    fields = {v.field for v in info.value.violations}
    assert {
        "source",
        "transforms[0].derive.expr",
        "transforms[1].sort.keys[0]",
        "transforms[2].aggregate.aggregations",
        "destination.table.connection",
        "batch_size",
        "extra",
    } <= fields


def test_every_kind_is_registered_once() -> None:
    assert sorted(KINDS) == sorted(
        [
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
        ]
    )


def test_document_round_trips_through_canonical_form() -> None:
    doc = parse_document(
        {
            "name": "x",
            **BASE,
            "transforms": [{"filter": "a > 1"}, {"select": ["a"]}, {"sort": ["-a"]}],
            "schedule": "*/5 * * * *",
        }
    )
    assert parse_spec(doc.spec.to_dict()) == doc.spec


def test_yaml_specs_read_only_true_and_false_as_booleans() -> None:
    """YAML 1.1 reads on/off/yes/no as booleans: lookup's ``on:`` key was
    ``True`` ("keys must be strings") and listed ``yes`` values were no text."""
    text = """
name: yaml12
source: {csv: {path: in.csv}}
transforms:
  - lookup: {source: {csv: {path: ref.csv}}, on: {id: id}, columns: [tag]}
  - validate: {in_list: {answer: [yes, no, on, off, Y]}}
destination: {jsonl: {path: out.jsonl}}
"""
    doc = parse_document(load_text(text))
    lookup, validate = (t.options for t in doc.spec.transforms)
    assert lookup["on"] == {"id": "id"}
    assert validate["in_list"] == {"answer": ["yes", "no", "on", "off", "Y"]}
    assert load_text("a: [true, False, TRUE]") == {"a": [True, False, True]}


def test_cast_rejects_bad_values_with_reasons_and_keeps_good_rows() -> None:
    out, rejects, p = run(
        [{"cast": {"n": "integer", "f": "float", "ok": "boolean", "t": "timestamp"}}],
        ["n", "f", "ok", "t"],
        [
            ["1", "2.5", "yes", "2024-01-02T03:04:05Z"],
            ["x", "1", "no", ""],
            ["", "", "", ""],
            ["3", "1e3", "maybe", ""],
            ["4.0", "1", "n", "nope"],
            ["4.5", "1", "n", ""],
        ],
    )
    assert [r[:3] for r in out.rows] == [[1, 2.5, True], [None, None, None]]
    assert out.kinds == ["integer", "float", "boolean", "timestamp"]
    reasons = sorted(r.reason for r in rejects)
    assert reasons == [
        "cast n: '4.5' is not a whole number",
        "cast n: 'x' is not an integer",
        "cast ok: 'maybe' is not a boolean (true/false, yes/no, 1/0)",
        "cast t: 'nope' is not an ISO 8601 timestamp",
    ]
    bad = next(r for r in rejects if "'x'" in r.reason)
    assert bad.stage == "transforms[0].cast" and bad.row == {
        "n": "x",
        "f": "1",
        "ok": "no",
        "t": "",
    }
    stage = p.stages[1]
    assert (stage.read, stage.written, stage.rejected) == (6, 2, 4)


def test_filter_derive_select_rename_drop_keep_counters() -> None:
    out, rejects, p = run(
        [
            {"cast": {"a": "integer", "b": "integer"}},
            {"filter": "a > 1"},
            {"derive": {"column": "q", "expr": "a / b"}},
            {"rename": {"a": "x"}},
            {"drop": ["b"]},
            {"select": ["q", "x"]},
        ],
        ["a", "b"],
        [["1", "1"], ["2", "0"], ["4", "2"], ["9", "3"], ["", "1"]],
    )
    assert out.columns == ["q", "x"]
    assert out.rows == [[2.0, 4], [3.0, 9]]
    assert [r.reason for r in rejects] == ["derive q: division by zero"]
    counts = [(s.stage, s.read, s.written, s.rejected) for s in p.stages]
    assert counts[1:4] == [
        ("transforms[0].cast", 5, 5, 0),
        ("transforms[1].filter", 5, 3, 0),  # 1 and null are filtered out
        ("transforms[2].derive", 3, 2, 1),
    ]
    assert p.stages[-1].written == 2


def test_validate_dedupe_aggregate() -> None:
    rows: list[list[Any]] = [
        ["a", 1],
        ["b", 5],
        ["a", 3],
        ["c", None],
        ["a", 100],
        ["b", 5],
        ["a", 3],
    ]
    out, rejects, _ = run(
        [
            {
                "validate": {
                    "range": {"v": {"min": 0, "max": 10}},
                    "in_list": {"k": ["a", "b", "c"]},
                }
            },
            {"dedupe": ["k", "v"]},
            {
                "aggregate": {
                    "group_by": ["k"],
                    "aggregations": [
                        {"op": "count", "output": "n"},
                        {"op": "sum", "column": "v"},
                        {"op": "avg", "column": "v"},
                        {"op": "max", "column": "v"},
                    ],
                }
            },
        ],
        ["k", "v"],
        rows,
    )
    assert out.rows == [["a", 2, 4, 2.0, 3], ["b", 1, 5, 5.0, 5], ["c", 1, None, None, None]]
    assert [r.reason for r in rejects] == ["range: v=100 is outside [0, 10]"]


def test_validate_unique_not_null_regex_and_schema() -> None:
    out, rejects, _ = run(
        [
            {
                "validate": {
                    "not_null": ["id"],
                    "regex": {"id": "[0-9]+"},
                    "unique": ["id"],
                    "schema": {"n": "integer"},
                }
            }
        ],
        ["id", "n"],
        [["1", "x"], ["1", "y"], ["", "z"], ["a", "w"], ["2", "v"]],
    )
    assert out.rows == []
    reasons = [r.reason for r in rejects]
    assert "schema: n is not integer: 'x'" in reasons
    assert "not_null: id is empty" in reasons
    out, rejects, _ = run([{"validate": {"regex": {"id": "[0-9]+"}}}], ["id"], [["a"], ["12"]])
    assert [r.reason for r in rejects] == ["regex: id='a' does not match '[0-9]+'"]
    out, rejects, _ = run(
        [{"validate": {"unique": ["id"]}}], ["id"], [["1"], ["2"], ["1"], ["1"], ["3"]]
    )
    assert out.rows == [["1"], ["2"], ["3"]]
    assert [r.reason for r in rejects] == ["unique: id='1' was seen before"] * 2


def test_sort_is_stable_with_nulls_last_under_a_small_memory_limit() -> None:
    values: list[list[Any]] = [[i % 13, i] for i in range(500)] + [[None, -1]]
    out, _, _ = run([{"sort": ["-k", "s"]}], ["k", "s"], values, size=50, memory_limit="64MB")
    keys = [r[0] for r in out.rows]
    assert keys[:-1] == sorted(keys[:-1], reverse=True) and keys[-1] is None
    assert len(out.rows) == 501
    firsts = [r[1] for r in out.rows if r[0] == 12]
    assert firsts == sorted(firsts)


def test_unknown_columns_are_field_problems_at_bind() -> None:
    with pytest.raises(PermanentError) as info:
        run([{"select": ["a", "zz"]}, {"filter": "a > q"}], ["a", "b"], [["1", "2"]])
    assert info.value.reason == "INVALID_PIPELINE"
    assert "transforms[0].select.columns" in str(info.value)
    assert "transforms[1].filter.expr" in str(info.value)


def test_lookup_join_left_and_inner_first_match_wins() -> None:
    lookups = {"c.csv": (["id", "name"], [["1", "ann"], ["2", "bob"], ["1", "later"]])}
    for how, expected in (
        ("left", [["1", "9", "ann"], ["3", "8", None], ["2", "7", "bob"]]),
        ("inner", [["1", "9", "ann"], ["2", "7", "bob"]]),
    ):
        out, _, p = run(
            [
                {
                    "lookup": {
                        "source": {"csv": "c.csv"},
                        "on": {"cid": "id"},
                        "columns": ["name"],
                        "how": how,
                    }
                }
            ],
            ["cid", "x"],
            [["1", "9"], ["3", "8"], ["2", "7"]],
            lookups=lookups,
        )
        assert out.rows == expected
        assert p.stages[1].written == len(expected)
