"""What a handler writes to stdout, where Lambda takes logs and metrics from:
one JSON line per log record with the invocation's request id, function
name, cold-start flag and trace id, and CloudWatch EMF metrics per
invocation. Run in a fresh interpreter, as a container would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import clean_env

ROOT = Path(__file__).resolve().parents[2]
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"

CONTAINER = """
import json
from handlers import _runtime, tasks
records = [
    {"messageId": "ok", "eventSource": "aws:sqs", "attributes": {},
     "body": json.dumps({"capability": "echo", "input": 1})},
    {"messageId": "bad", "eventSource": "aws:sqs", "attributes": {}, "body": "{nope"},
]
for n in (1, 2):
    context = _runtime.LocalContext(30, "datamcp-tasks")
    context.aws_request_id = f"request-{n}"
    tasks.handler({"Records": records}, context)
_runtime.shutdown()
"""


def run_container(tmp_path: Path) -> list[dict[str, Any]]:
    env = clean_env(
        {
            "DATAMCP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'c.db'}",
            "POWERTOOLS_SERVICE_NAME": "datamcp-tasks",
            "_X_AMZN_TRACE_ID": TRACE,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", CONTAINER],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stderr.strip() == "", proc.stderr  # everything is a JSON line on stdout
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_log_lines_carry_the_invocation_and_metrics_are_emf(tmp_path: Path) -> None:
    lines = run_container(tmp_path)
    logs = [line for line in lines if "_aws" not in line]
    emf = [line for line in lines if "_aws" in line]
    failed = [line for line in logs if line["message"] == "record failed"]
    assert [f["function_request_id"] for f in failed] == ["request-1", "request-2"]
    assert [f["cold_start"] for f in failed] == [True, False]
    for line in logs:
        assert line["function_name"] == "datamcp-tasks" and line["service"] == "datamcp-tasks"
        assert line["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
        assert line["level"] in {"INFO", "WARNING", "ERROR"}
    assert failed[0]["message_id"] == "bad" and "not JSON" in failed[0]["error"]
    # The library's lines too (the migration at the cold start), formatted the same.
    assert any(line["message"].startswith("database upgraded") for line in logs)
    per_invocation = [m for m in emf if "RecordsProcessed" in m]
    assert len(per_invocation) == 2
    for m in per_invocation:
        (directive,) = m["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "DataMCP"
        assert sorted(directive["Dimensions"][0]) == ["handler", "service"]
        assert (m["handler"], m["service"]) == ("tasks", "datamcp-tasks")
        assert (m["RecordsProcessed"], m["RecordsFailed"], m["RecordsDeadLettered"]) == (
            [1.0],
            [1.0],
            [0.0],
        )
        assert m["ProcessingTime"][0] > 0
    cold = [m for m in emf if "ColdStart" in m]
    assert len(cold) == 1 and cold[0]["function_name"] == "datamcp-tasks"
