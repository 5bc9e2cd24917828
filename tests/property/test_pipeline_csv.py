"""Property: the pipeline's CSV reading agrees with Python's ``csv.reader``.

Generated files mix quoted fields, embedded newlines, ``\\r\\n`` and ``\\n``
line ends, a byte order mark, empty fields, rows of the wrong width and rows
over the size limit. A run (CSV source -> JSON Lines destination, through
the engine as the server runs it) writes exactly the rows ``csv.reader``
reads with the header's width and under the limit, and rejects every other
non-blank record with a reason; the counters add up (read = written +
rejected). Files damaged by stray quotes are read as the CSV standard says
(a record ``csv.reader`` would guess at may be rejected instead), with the
counters still adding up: no row is ever lost without a reason.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamcp.adapters.pipelines import PipelineConnectors
from datamcp.adapters.pipelines import csv as csv_adapter
from datamcp.core.pipelines.engine import Engine, Progress
from datamcp.core.pipelines.ports import PermanentError, ReadContext
from datamcp.core.pipelines.spec import parse_spec

LIMIT = 4096  # the row size limit during this test (4 MiB in production)

field_text = st.lists(
    st.sampled_from(["a", "b", " ", ",", '"', "\n", "\r", "é", "NA", "x\ty", "\r\n"]),
    max_size=8,
).map("".join)
big_field = st.integers(min_value=2 * LIMIT, max_value=3 * LIMIT).map(lambda n: "z" * n)
field = st.one_of(field_text, field_text, field_text, st.just(""), big_field)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, bool]:
    width = draw(st.integers(min_value=1, max_value=4))
    header = [f"c{i}" for i in range(width)]
    records = draw(
        st.lists(
            st.one_of(
                st.lists(field, min_size=width, max_size=width),
                st.lists(field, min_size=0, max_size=width + 2),  # wrong widths
            ),
            max_size=8,
        )
    )
    out = io.StringIO()
    ending = draw(st.sampled_from(["\r\n", "\n"]))
    writer = csv.writer(out, lineterminator=ending)
    writer.writerow(header)
    for record in records:
        writer.writerow(record)
    text = out.getvalue()
    # Raw damage the writer never makes: blank lines, stray quotes, a cut tail.
    damage = draw(st.integers(min_value=0, max_value=2)) if draw(st.booleans()) else 0
    for _ in range(damage):
        at = draw(
            st.integers(min_value=len(text.split(ending, 1)[0]) + len(ending), max_value=len(text))
        )
        text = text[:at] + draw(st.sampled_from(['"', ending, 'x"y', ","])) + text[at:]
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text, damage > 0


def expected(text: str) -> tuple[list[str], list[dict[str, str]], int, bool]:
    """What csv.reader makes of ``text``: the header, the rows of its width,
    how many other non-blank records there are, and whether a row is over
    the size limit."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    records = [r for r in reader if r]
    header = [h.strip() for h in records[0]]
    good = [dict(zip(header, r, strict=True)) for r in records[1:] if len(r) == len(header)]
    big = any(sum(map(len, r)) >= LIMIT for r in records)
    return header, good, len(records) - 1 - len(good), big


@pytest.fixture(scope="module")
def field_limit() -> Iterator[None]:
    before = csv_adapter.MAX_LINE
    csv_adapter.MAX_LINE = LIMIT
    try:
        yield
    finally:
        csv_adapter.MAX_LINE = before


def run_pipeline(root: Path, text: str) -> tuple[str, Any, list[Any], Progress | None]:
    (root / "in.csv").write_bytes(text.encode("utf-8"))
    out = root / "out.jsonl"
    out.unlink(missing_ok=True)
    spec = parse_spec(
        {"source": {"csv": {"path": "in.csv"}}, "destination": {"jsonl": {"path": "out.jsonl"}}}
    )
    engine = Engine(PipelineConnectors(data_roots=[root]), batch_size=3, chunk_rows=2, threads=1)
    final: list[Progress] = []
    rejects: list[Any] = []

    async def progress(p: Progress) -> None:
        rejects.extend(p.rejects)
        final.append(p)

    try:
        asyncio.run(engine.execute(spec, ReadContext("t", {}), "run-1", progress))
    except PermanentError as exc:
        return "FAILED", exc, rejects, None
    lines = out.read_text(encoding="utf-8").splitlines()
    return "SUCCEEDED", [json.loads(x) for x in lines], rejects, final[-1]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=csv_files())
def test_csv_reading_agrees_with_csv_reader(
    tmp_path: Path, field_limit: None, case: tuple[str, bool]
) -> None:
    text, damaged = case
    _header, good, other, big = expected(text)
    state, outcome, rejects, progress = run_pipeline(tmp_path, text)
    if big and not damaged:
        assert state == "FAILED", "a row over the limit must fail the run or be rejected"
        assert outcome.reason == "SOURCE_ERROR" and "limit" in str(outcome)
        assert not (tmp_path / "out.jsonl").exists()
        return
    if state == "FAILED":
        # A file the CSV standard does not describe may fail whole, with a reason.
        mixed = re.search(r"\r(?!\n)", text) is not None or (
            "\r\n" in text and re.search(r"(?<!\r)\n", text) is not None
        )
        assert (damaged or mixed) and outcome.reason == "SOURCE_ERROR", outcome
        assert not (tmp_path / "out.jsonl").exists()
        return
    assert progress is not None
    source = progress.stages[0]
    assert source.read == source.written + source.rejected
    assert source.rejected == len(rejects)
    assert progress.written == len(outcome) == source.written
    assert all(r.reason for r in rejects)
    if not damaged:
        assert outcome == good
        assert len(rejects) == other
