"""Live progress of a run or a sync, drawn with rich (JSON lines with ``-o json``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from datamcp_client.cli._common import Output

T = TypeVar("T")


async def follow(
    out: Output,
    updates: AsyncIterator[T],
    *,
    title: str,
    counters: Callable[[T], str],
    state: Callable[[T], str],
) -> T | None:
    """Show every update of ``updates`` until it ends; return the last one.

    On a terminal it is a live line (spinner, elapsed time, counters); when
    stdout is not a terminal rich draws only the final state, and ``-o json``
    prints one JSON object per update.
    """
    last: T | None = None
    if out.json:
        async for last in updates:
            out.write_json(last)
        return last
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns: list[Any] = [
        SpinnerColumn(finished_text="[bold]done[/]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[state]}"),
        TextColumn("{task.fields[counters]}"),
    ]
    with Progress(*columns, console=out.console, transient=False) as progress:
        bar = progress.add_task(title, total=None, state="", counters="")
        async for last in updates:
            progress.update(bar, state=state(last), counters=counters(last))
        progress.update(bar, total=1, completed=1)
    return last
