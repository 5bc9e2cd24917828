"""Event validation, type patterns and filters."""

from __future__ import annotations

import pytest

from datamcp.core.errors import InvalidArgument
from datamcp.core.events.model import EventFilter, new_event, type_matches


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("pipeline.run.*", "pipeline.run.succeeded", True),
        ("pipeline.run.*", "pipeline.run.window.closed", True),
        ("pipeline.run.*", "pipeline.runs.started", False),
        ("pipeline.run.*", "pipeline.run", False),
        ("task.failed", "task.failed", True),
        ("task.failed", "task.failed.twice", False),
        ("*", "anything.at.all", True),
    ],
)
def test_type_patterns(pattern: str, event_type: str, expected: bool) -> None:
    assert type_matches(pattern, event_type) is expected


def test_validation_reports_every_field() -> None:
    with pytest.raises(InvalidArgument) as err:
        new_event(
            type="Bad Type",
            source="",
            subject="s" * 600,
            id="",
            data={"x": object()},
            field_prefix="events[3].",
        )
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "events[3].type",
        "events[3].source",
        "events[3].subject",
        "events[3].id",
        "events[3].data",
    }


def test_oversized_data_is_refused_with_its_size() -> None:
    with pytest.raises(InvalidArgument, match="invalid event") as err:
        new_event(type="a.b", source="/s", data="x" * 100, max_data_bytes=50)
    assert "102 bytes" in err.value.violations[0].description


def test_filters_match_source_and_subject_prefixes() -> None:
    event = new_event(type="task.failed", source="/agents/echo", subject="tenant-a/task-1")
    assert EventFilter.build(["task.*"], "/agents/*", "tenant-a/*").matches(event)
    assert not EventFilter.build(["task.*"], "/pipelines/*").matches(event)
    assert not EventFilter.build(subject="tenant-b/*").matches(event)
    assert EventFilter.from_json(EventFilter.build(["a.*"], "x").to_json()) == EventFilter(
        ("a.*",), "x", ""
    )
    with pytest.raises(InvalidArgument):
        EventFilter.build(["task.**"])
