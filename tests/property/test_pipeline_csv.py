"""Property: the pipeline's CSV reading agrees with Python's ``csv.reader``.

Generated files mix quoted fields, embedded newlines, ``\\r\\n`` and ``\\n``
line ends, a byte order mark, empty fields, rows of the wrong width, stray
quotes and fields over the size limit. A run (CSV source -> JSON Lines
destination, through the engine as the server runs it) must end in one of
two ways:

- SUCCEEDED, writing exactly the rows ``csv.reader`` reads with the
  header's width and rejecting every other non-blank record with a reason;
  the counters add up (read = written + rejected);
- FAILED with a reason when a field is over the size limit, writing nothing.

Never SUCCEEDED with a row missing.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamcp.adapters.pipelines import PipelineConnectors
from datamcp.core.pipelines.engine import Engine, Progress
from datamcp.core.pipelines.ports import PermanentError, ReadContext
from datamcp.core.pipelines.spec import parse_spec

LIMIT = 300  # the field size limit during this test (16 MiB in production)

field_text = st.lists(
    st.sampled_from(["a", "b", " ", ",", '"', "\n", "\r", "é", "NA", "x\ty", "\r\n"]),
    max_size=8,
).map("".join)
big_field = st.integers(min_value=LIMIT - 5, max_value=LIMIT + 40).map(lambda n: "z" * n)
field = st.one_of(field_text, field_text, field_text, st.just(""), big_field)


@st.composite
def csv_files(draw: st.DrawFn) -> str:
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
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        at = draw(
            st.integers(min_value=len(text.split(ending, 1)[0]) + len(ending), max_value=len(text))
        )
        text = text[:at] + draw(st.sampled_from(['"', ending, 'x"y', ","])) + text[at:]
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text


def expected(text: str) -> tuple[list[str], list[dict[str, str]], int] | None:
    """What csv.reader makes of ``text``: header, rows of its width, and how
    many other non-blank records there are; None when a field is over the limit."""
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        records = [r for r in reader if r]
    except csv.Error:
        return None
    header = [h.strip() for h in records[0]]
    rows = [dict(zip(header, r, strict=True)) for r in records[1:] if len(r) == len(header)]
    return header, rows, sum(1 for r in records[1:] if len(r) != len(header))


@pytest.fixture(scope="module")
def field_limit() -> Iterator[None]:
    before = csv.field_size_limit(LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def run_pipeline(root: Path, text: str) -> tuple[str, Any, list[Any], Progress | None]:
    (root / "in.csv").write_bytes(text.encode("utf-8"))
    out = root / "out.jsonl"
    out.unlink(missing_ok=True)
    spec = parse_spec(
        {"source": {"csv": {"path": "in.csv"}}, "destination": {"jsonl": {"path": "out.jsonl"}}}
    )
    engine = Engine(PipelineConnectors(data_roots=[root]), batch_size=3, chunk_rows=2)
    final: list[Progress] = []
    rejects: list[Any] = []

    async def progress(p: Progress) -> None:
        rejects.extend(p.rejects)
        final.append(p)

    try:
        asyncio.run(engine.execute(spec, ReadContext("t", {}), "run-1", progress))
    except PermanentError as exc:
        return "FAILED", exc, rejects, None
    lines = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
    return "SUCCEEDED", [json.loads(x) for x in lines], rejects, final[-1]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=csv_files())
def test_csv_reading_agrees_with_csv_reader(tmp_path: Path, field_limit: None, text: str) -> None:
    want = expected(text)
    state, outcome, rejects, progress = run_pipeline(tmp_path, text)
    if want is None:
        assert state == "FAILED", "a field over the limit must fail the run or reject its row"
        assert outcome.reason == "SOURCE_ERROR" and "limit" in str(outcome)
        assert not (tmp_path / "out.jsonl").exists()
        return
    header, rows, wrong_width = want
    assert state == "SUCCEEDED", outcome
    assert outcome == rows
    assert len(rejects) == wrong_width
    assert all(r.reason.startswith(f"expected {len(header)} fields") for r in rejects)
    assert progress is not None
    source = progress.stages[0]
    assert source.read == len(rows) + wrong_width == source.written + source.rejected
    assert progress.written == len(rows)
