"""handlers.schedule.handler in two containers (processes) whose ticks
overlap: each cron slot fires once, whichever container wins it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamcp.core.pipelines.model import RunState
from handlers import _runtime
from tests.integration.test_handlers_schedule import (
    SLOT,
    container_env,
    create_due_pipeline,
    runs_of,
    sync_runs,
    write_rows,
)
from tests.support import clean_env

ROOT = Path(__file__).resolve().parents[2]


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


OVERLAP = """
import json, sys, time
from handlers import _runtime, schedule
from tests.lambda_events import scheduled_event
slot, start_at = float(sys.argv[1]), float(sys.argv[2])
import datamcp.bootstrap  # the app's imports, before the start line
time.sleep(max(0.0, start_at - time.time()))
answer = schedule.handler(scheduled_event(at=slot), _runtime.LocalContext(30))
print(json.dumps(answer["due"]))
_runtime.shutdown()
"""


def test_overlapping_ticks_in_two_containers_fire_each_slot_once(
    lambda_env: dict[str, str], tmp_path: Path
) -> None:
    write_rows(tmp_path, 100)
    pipeline = create_due_pipeline()
    _runtime.shutdown()  # this process is not one of the containers
    start_at = time.time() + 4.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OVERLAP, str(SLOT), str(start_at)],
            cwd=ROOT,
            env={**clean_env({}), **lambda_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    answers = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
        answers.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(a["pipelines"] for a in answers) == 1
    assert sum(a["memory.sync"] for a in answers) == 1
    (run,) = runs_of(pipeline)
    assert run.state is RunState.SUCCEEDED
    assert [s.id for s in sync_runs()] == [f"sched-minutely-{int(SLOT)}"]
