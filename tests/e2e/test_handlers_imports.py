"""Cold start: handler modules import no grpc or protobuf service code, not
at import and not after building the app and handling an event."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("grpc", "google.protobuf", "datamcp.v1", "datamcp.entrypoints.grpc")

PROBE = """
import json, sys
import {module}
loaded = lambda: sorted(m for m in sys.modules if m in {forbidden} or m.startswith({prefixes}))
after_import = loaded()
from handlers import _runtime
event = json.loads({event!r})
getattr({module}, "handler")(event, _runtime.LocalContext(20))
print(json.dumps({{"import": after_import, "invoke": loaded()}}))
_runtime.shutdown()
"""

EVENTS = {
    "handlers.tasks": {
        "Records": [
            {
                "messageId": "m-1",
                "body": json.dumps({"capability": "echo", "input": 1}),
                "eventSource": "aws:sqs",
                "attributes": {},
            }
        ]
    },
    "handlers.events": {
        "id": "e-1",
        "detail-type": "order.created",
        "source": "shop",
        "time": "2026-01-01T00:00:00Z",
        "detail": {},
    },
    "handlers.schedule": {"detail-type": "Scheduled Event", "detail": {}},
}


@pytest.mark.parametrize("module", sorted(EVENTS))
def test_handler_imports_no_grpc_even_after_an_invocation(module: str, tmp_path: Path) -> None:
    code = PROBE.format(
        module=module,
        forbidden=repr(FORBIDDEN),
        prefixes=repr(tuple(f"{m}." for m in FORBIDDEN)),
        event=json.dumps(EVENTS[module]),
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DATAMCP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        "DATAMCP_LOGGING_LEVEL": "ERROR",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"import": [], "invoke": []}


def test_the_probe_would_see_grpc() -> None:
    """The check above can fail: the server module does pull grpc."""
    code = "import sys, datamcp.entrypoints.grpc.server; print('grpc' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "True", proc.stderr
