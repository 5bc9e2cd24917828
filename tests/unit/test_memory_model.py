"""Clock, versions, validation and the pure conflict settlement."""

from __future__ import annotations

import json

import pytest

from datamcp.core.errors import InvalidArgument
from datamcp.core.memory.clock import HybridClock, concurrent, dominates, join
from datamcp.core.memory.model import Record, Strategy, Version, check_namespace, in_prefix
from datamcp.core.memory.resolve import Policy, Relation, relation, settle


def rec(origin: str, hlc: int, value: object, vv: dict[str, int], base: object = None) -> Record:
    return Record(
        tenant="t",
        namespace="ns",
        key="k",
        value_json=json.dumps(value),
        hlc=hlc,
        origin=origin,
        vv=vv,
        base_json=None if base is None else json.dumps(base),
    )


def test_hlc_is_monotonic_when_the_wall_clock_stands_still_or_goes_back() -> None:
    wall = [100.0]
    clock = HybridClock(lambda: wall[0])
    a = clock.now()
    b = clock.now()
    wall[0] = 99.0
    c = clock.now()
    clock.observe(c + 1000)
    d = clock.now()
    assert a < b < c < d and d > c + 1000
    assert clock.now(after=d + 5) > d + 5


def test_version_vectors() -> None:
    assert dominates({"a": 2, "b": 1}, {"a": 1})
    assert not dominates({"a": 1}, {"a": 1, "b": 1})
    assert concurrent({"a": 2}, {"b": 1})
    assert join({"a": 2, "b": 1}, {"a": 1, "c": 3}) == {"a": 2, "b": 1, "c": 3}


def test_version_round_trip_and_bad_version() -> None:
    v = Version(0x1234, "store-a")
    assert Version.parse(str(v)) == v
    with pytest.raises(InvalidArgument):
        Version.parse("nonsense")


@pytest.mark.parametrize("bad", ["", "/a", "a/", "a//b", "a b", "x" * 300, "/".join("a" * 20)])
def test_bad_namespaces(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_namespace(bad)
    assert info.value.violations[0].field == "namespace"


def test_prefix_is_hierarchical() -> None:
    assert in_prefix("a/b/c", "a/b") and in_prefix("a/b", "a/b") and in_prefix("x", "")
    assert not in_prefix("a/bc", "a/b")


def test_relation_by_version_vectors_not_clocks() -> None:
    old = rec("a", 10, 1, {"a": 10})
    newer = rec("b", 5, 2, {"a": 10, "b": 5})  # a smaller HLC but it saw `old`
    assert relation(old, newer) == Relation.NEWER
    assert relation(newer, old) == Relation.SAME_OR_OLDER
    assert relation(old, rec("c", 1, 3, {"c": 1})) == Relation.CONCURRENT


def test_timestamp_wins_with_store_id_tie_break() -> None:
    x, y = rec("a", 7, "x", {"a": 7}), rec("b", 7, "y", {"b": 7})
    for left, right in ((x, y), (y, x)):
        settled = settle(left, right, Policy(Strategy.TIMESTAMP_WINS))
        assert settled is not None
        assert settled.value == "y" and settled.vv == {"a": 7, "b": 7}


def test_source_priority_and_manual() -> None:
    x, y = rec("a", 9, "x", {"a": 9}), rec("b", 7, "y", {"b": 7})
    settled = settle(x, y, Policy(Strategy.SOURCE_PRIORITY, priority=("b", "a")))
    assert settled is not None and settled.value == "y"
    assert settle(x, y, Policy(Strategy.MANUAL)) is None


def test_three_way_merge_keeps_one_sided_changes_and_breaks_ties() -> None:
    base = {"title": "t", "body": "b", "tags": {"x": 1}}
    left = rec("a", 5, {"title": "T", "body": "b", "tags": {"x": 1, "y": 2}}, {"a": 5}, base)
    right = rec("b", 6, {"title": "t", "body": "B", "tags": {"x": 0}}, {"b": 6}, base)
    merged = settle(left, right, Policy(Strategy.MERGE))
    assert merged is not None
    assert merged.value == {"title": "T", "body": "B", "tags": {"x": 0, "y": 2}}
    # A field changed differently on both sides: the tie-break decides, or manual.
    clash = rec("b", 6, {"title": "Other", "body": "b", "tags": {"x": 1}}, {"b": 6}, base)
    by_time = settle(left, clash, Policy(Strategy.MERGE, Strategy.TIMESTAMP_WINS))
    assert by_time is not None and by_time.value["title"] == "Other"
    by_rank = settle(left, clash, Policy(Strategy.MERGE, Strategy.SOURCE_PRIORITY, ("a", "b")))
    assert by_rank is not None and by_rank.value["title"] == "T"
    assert settle(left, clash, Policy(Strategy.MERGE, Strategy.MANUAL)) is None
