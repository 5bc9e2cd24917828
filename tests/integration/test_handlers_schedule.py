"""handlers.schedule.handler fires what the servers' schedulers would: cron
memory syncs and pipeline cron schedules, each slot once; and it never
returns with their work running. (Ticks overlapping in two containers:
``tests/e2e/test_handlers_schedule_overlap.py``.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from datamcp.core.pipelines.model import RunState
from datamcp.core.pipelines.service import Definition
from handlers import _runtime, schedule
from tests.integration.test_handlers_tasks import on_app
from tests.lambda_events import scheduled_event

SLOT = 1_700_000_040.0  # a minute boundary
SYNCS = [{"name": "minutely", "cron": "* * * * *", "strategy": "timestamp_wins"}]
PIPELINE = """
name: copy
source:
  csv: {path: in.csv}
destination:
  jsonl: {path: out.jsonl}
schedule: "* * * * *"
"""


def container_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """What the SAM template sets, for a two-store memory setup and files."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    stores = [
        {"id": "main", "url": database_url, "primary": True},
        {"id": "edge", "url": f"sqlite:///{tmp_path / 'edge.db'}"},
    ]
    return {
        "DATAMCP_DATABASE_URL": database_url,
        "DATAMCP_MEMORY_STORES": json.dumps(stores),
        "DATAMCP_MEMORY_SCHEDULES": json.dumps(SYNCS),
        "DATAMCP_PIPELINES_DATA_ROOTS": json.dumps([str(files)]),
        "DATAMCP_LOGGING_LEVEL": "WARNING",
    }


@pytest.fixture
def lambda_env(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    env = container_env(tmp_path, database_url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        yield env
    finally:
        _runtime.shutdown()


def write_rows(tmp_path: Path, rows: int) -> None:
    lines = ["id,name"] + [f"{i},row {i}" for i in range(rows)]
    (tmp_path / "files" / "in.csv").write_text("\n".join(lines) + "\n")


def create_due_pipeline() -> str:
    """A cron pipeline whose next slot has come (its stored next fire time is
    moved to the past: the service fires on its own clock, not the tick's)."""

    async def create(app: Any) -> str:
        pipeline = await app.pipelines.create("default", Definition(text=PIPELINE))
        async with app.engine.begin() as conn:
            await conn.execute(
                text("UPDATE pipelines SET next_fire_at = :t WHERE id = :id"),
                {"t": time.time() - 1, "id": pipeline.id},
            )
        return str(pipeline.id)

    result: str = on_app(create)
    return result


def runs_of(pipeline_id: str) -> list[Any]:
    async def read(app: Any) -> list[Any]:
        runs, _ = await app.pipelines.list_runs(
            "default", pipeline=pipeline_id, states=[], page_size=50, page_token=""
        )
        return list(runs)

    result: list[Any] = on_app(read)
    return result


def sync_runs() -> list[Any]:
    async def read(app: Any) -> list[Any]:
        runs, _ = await app.memory.sync.list_runs("default", 50, "")
        return list(runs)

    result: list[Any] = on_app(read)
    return result


def tick(at: float, seconds: float = 30.0, work: list[str] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = schedule.handler(
        scheduled_event(at=at, work=work), _runtime.LocalContext(seconds)
    )
    return answer


def test_a_tick_fires_due_syncs_and_pipelines_once_and_waits_for_them(
    lambda_env: dict[str, str], tmp_path: Path
) -> None:
    write_rows(tmp_path, 3)
    pipeline = create_due_pipeline()
    answer = tick(SLOT)
    assert answer["due"] == {"memory.sync": 1, "pipelines": 1}
    assert answer["errors"] == {} and answer["stopped"] == 0
    # Both ran to their end inside the invocation.
    (run,) = runs_of(pipeline)
    assert run.state is RunState.SUCCEEDED and run.rows_written == 3
    assert (tmp_path / "files" / "out.jsonl").read_text().count("\n") == 3
    (sync,) = sync_runs()
    assert sync.id == f"sched-minutely-{int(SLOT)}" and sync.status.name == "SUCCEEDED"
    # The same tick again (EventBridge retries, or an overlapping one): nothing new.
    again = tick(SLOT)
    assert again["due"] == {"memory.sync": 0, "pipelines": 0}
    assert len(runs_of(pipeline)) == 1 and len(sync_runs()) == 1
    # `work` picks kinds by name; pipelines is one now.
    assert tick(SLOT + 60, work=["pipelines"])["due"] == {"pipelines": 0}


def test_work_still_running_when_time_is_up_is_stopped_not_frozen(
    lambda_env: dict[str, str], tmp_path: Path
) -> None:
    write_rows(tmp_path, 400_000)
    pipeline = create_due_pipeline()
    answer = tick(SLOT - 3600, seconds=0.8, work=["pipelines"])  # warm: ~0.3 s of work
    assert answer["due"] == {"pipelines": 1} and answer["stopped"] == 1
    (run,) = runs_of(pipeline)
    assert run.state is RunState.FAILED and run.error.reason == "SERVER_STOPPED"
    assert not (tmp_path / "files" / "out.jsonl").exists()  # nothing half written
