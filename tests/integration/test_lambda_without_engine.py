"""The Lambda zip leaves the batch pipeline engine out (DuckDB, Arrow, the
SQLite ADBC driver: over Lambda's 250 MiB on their own). Its functions must
still build the app, parse and store every pipeline kind, and say clearly
that runs happen elsewhere, without claiming a schedule slot the servers
would fire. Run in a fresh process where those packages cannot be imported,
as in the package (``tests/e2e/test_lambda_rie.py`` runs the package itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import clean_env

ROOT = Path(__file__).resolve().parents[2]

# Every source, transform and destination kind the spec accepts.
SPEC = """
name: every-kind
source:
  csv: {path: in.csv, null_values: [NA]}
transforms:
  - filter: "amount > 0"
  - select: [id, amount, name]
  - rename: {name: label}
  - drop: [label]
  - cast: {amount: float}
  - derive: {column: double, expr: "amount * 2"}
  - validate: {not_null: [id], regex: {id: "[0-9]+"}, unique: [id]}
  - dedupe: [id]
  - lookup: {source: {jsonl: {path: ref.jsonl}}, on: {id: id}, columns: [tag]}
  - sort: [id]
  - aggregate: {group_by: [tag], aggregations: [{op: sum, column: amount}]}
destination:
  table: {connection: main, table: out}
schedule: "* * * * *"
"""

SCRIPT = """
import asyncio, importlib.abc, json, os, sys, time

LEFT_OUT = ("duckdb", "pyarrow", "adbc_driver_manager", "adbc_driver_sqlite")

class LeftOut(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in LEFT_OUT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, LeftOut())

from datamcp.core.errors import FailedPrecondition
from datamcp.core.pipelines.service import Definition
from handlers import _failures, _runtime, events, schedule

out = {}
async def probe(app, deadline):
    created = await app.pipelines.create("default", Definition(text=SPEC))
    out["created"] = created.name
    out["transforms"] = [t.kind for t in created.spec.transforms]
    for name, call in (
        ("run", lambda: app.pipelines.run("default", "every-kind")),
        ("preview", lambda: app.pipelines.validate(
            "default", Definition(text=SPEC), preview_rows=5)),
    ):
        try:
            await call()
            out[name] = "no error"
        except FailedPrecondition as exc:
            out[name] = [exc.reason, str(exc)]
    runs, _ = await app.pipelines.list_runs(
        "default", pipeline=created.id, states=[], page_size=10, page_token="")
    out["runs"] = len(runs)
    out["due"] = list(app.due.names)
    return {}

_runtime.invoke(probe, _runtime.LocalContext(30))
try:  # no dead-letter queue here: a permanent failure is raised, not retried
    events.handler({
        "version": "0", "id": "eb-1", "detail-type": "order.created", "source": "shop",
        "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
        "resources": [], "detail": {"id": 1},
    }, _runtime.LocalContext(30))
    out["event"] = "no error"
except Exception as exc:
    out["event"] = [getattr(exc, "reason", ""), _failures.permanent(exc)]
out["tick"] = schedule.handler({"time": "2026-01-01T00:01:00Z"}, _runtime.LocalContext(30))
out["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in LEFT_OUT)
_runtime.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_the_functions_parse_and_store_pipelines_and_refuse_runs_without_the_engine(
    tmp_path: Path,
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "in.csv").write_text("id,amount,name\n1,5,a\n")
    (files / "ref.jsonl").write_text('{"id": "1", "tag": "x"}\n')
    db = tmp_path / "app.db"
    env = clean_env(
        {
            "DATAMCP_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
            "DATAMCP_PIPELINES_DATA_ROOTS": json.dumps([str(files)]),
            "DATAMCP_PIPELINES_SQL_CONNECTIONS": json.dumps({"main": f"sqlite:///{db}"}),
            "DATAMCP_LOGGING_LEVEL": "WARNING",
            "DATAMCP_EVENTS_TRIGGERS": json.dumps(
                [
                    {
                        "name": "orders",
                        "types": ["order.created"],
                        "action": "pipeline.run",
                        "params": {"pipeline": "every-kind"},
                    }
                ]
            ),
            "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
        }
    )
    script = f"SPEC = {SPEC!r}\n" + textwrap.dedent(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    assert out["created"] == "every-kind"
    assert len(out["transforms"]) == 11
    for call in ("run", "preview"):
        reason, message = out[call]
        assert reason == "PIPELINE_ENGINE_MISSING", out
        assert "gRPC servers" in message
    assert out["runs"] == 0  # refused before anything was stored
    # A pipeline.run trigger cannot succeed here on any retry: permanent (one
    # dead letter where a queue is configured, tests/aws), never retried.
    assert out["event"] == ["PIPELINE_ENGINE_MISSING", True]
    # The tick fires what this package can run; the servers fire pipeline slots.
    assert out["due"] == ["memory.sync"]
    assert out["tick"]["errors"] == {}
    assert "pipelines" not in out["tick"]["due"]
    assert out["loaded"] == []
