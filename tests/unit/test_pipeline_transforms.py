"""Spec validation and transforms on batches, without I/O."""

from __future__ import annotations

from typing import Any

import pytest

from datamcp.core.errors import InvalidArgument
from datamcp.core.pipelines import transforms as tmod
from datamcp.core.pipelines.rows import RejectSink
from datamcp.core.pipelines.spec import parse_document, parse_spec
from datamcp.core.pipelines.transforms import compile_stages

BASE = {"source": {"csv": "in.csv"}, "destination": {"jsonl": "out.jsonl"}}


def run(
    transforms: list[Any], columns: list[str], rows: list[list[Any]], **kw: Any
) -> tuple[list[str], list[list[Any]], RejectSink]:
    spec = parse_spec({**BASE, "transforms": transforms})
    stages, _ = compile_stages(spec.transforms, columns, params={}, **kw)
    sink = RejectSink()
    out = [list(r) for r in rows]
    for i, stage in enumerate(stages):
        out = stage.process(out, sink)
        if stage.blocking:
            for finished in stage.finish(sink):
                rows_out = finished
                for later in stages[i + 1 :]:
                    rows_out = later.process(rows_out, sink)
                out.extend(rows_out)
            break
    return (stages[-1].columns if stages else columns), out, sink


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


def test_document_round_trips_through_canonical_form() -> None:
    doc = parse_document(
        {
            "name": "x",
            **BASE,
            "transforms": [{"filter": "a > 1"}, {"select": ["a"]}, {"sort": ["-a"]}],
            "schedule": "*/5 * * * *",
        }
    )
    again = parse_spec(doc.spec.to_dict())
    assert again == doc.spec


def test_cast_rejects_bad_values_with_reasons_and_keeps_good_rows() -> None:
    _, rows, sink = run(
        [{"cast": {"n": "integer", "f": "float", "ok": "boolean"}}],
        ["n", "f", "ok"],
        [["1", "2.5", "yes"], ["x", "1", "no"], ["", "", ""], ["3", "1e3", "maybe"]],
        text_columns=frozenset({"n", "f", "ok"}),
    )
    assert rows == [[1, 2.5, True], [None, None, None]]
    assert sink.total == 2
    assert "cast n: 'x' is not an integer" in sink.kept[0].reason
    assert "'maybe' is not a boolean" in sink.kept[1].reason


def test_validate_dedupe_aggregate() -> None:
    rows = [["a", 1], ["b", 5], ["a", 3], ["c", None], ["a", 100], ["b", 5]]
    _, out, sink = run(
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
    assert sorted(out, key=lambda r: r[0]) == [
        ["a", 2, 4, 2.0, 3],
        ["b", 1, 5, 5.0, 5],
        ["c", 1, None, None, None],
    ]
    assert sink.total == 1 and "outside" in sink.kept[0].reason


def test_sort_spills_to_disk_and_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tmod, "SORT_SPILL_ROWS", 7)
    values = [[i % 13, str(i)] for i in range(50)] + [[None, "z"]]
    _, out, _ = run([{"sort": ["-k", "s"]}], ["k", "s"], values)
    keys = [r[0] for r in out]
    assert keys[:-1] == sorted(keys[:-1], reverse=True) and keys[-1] is None
    assert len(out) == 51


def test_unknown_columns_are_field_problems_at_bind() -> None:
    spec = parse_spec({**BASE, "transforms": [{"select": ["a", "zz"]}, {"filter": "a > q"}]})
    with pytest.raises(InvalidArgument) as info:
        compile_stages(spec.transforms, ["a", "b"], params={})
    fields = [v.field for v in info.value.violations]
    assert fields == ["transforms[0].select.columns", "transforms[1].filter.expr"]


def test_lookup_join_left_and_inner() -> None:
    spec = parse_spec(
        {
            **BASE,
            "transforms": [
                {"lookup": {"source": {"csv": "c.csv"}, "on": {"cid": "id"}, "columns": ["name"]}}
            ],
        }
    )
    lookups = {0: (["id", "name"], [["1", "ann"], ["2", "bob"]])}
    stages, _ = compile_stages(spec.transforms, ["cid", "x"], params={}, lookups=lookups)
    out = stages[0].process([["1", 9], ["3", 8]], RejectSink())
    assert out == [["1", 9, "ann"], ["3", 8, None]]
