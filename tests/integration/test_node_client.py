"""examples/node-client against the real server with API keys on: a task, a
subscription with acks, and google.rpc error details decoded from the
vendored proto/google/rpc definitions."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import API_KEY, auth_overrides, clean_env, make_settings, running_server

CLIENT_DIR = Path(__file__).resolve().parents[2] / "examples" / "node-client"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(not (NODE and NPM), reason="node and npm are needed")


@pytest.fixture(scope="session")
def client_script() -> Path:
    packages = ("@grpc/grpc-js", "@grpc/proto-loader", "protobufjs")
    if not all((CLIENT_DIR / "node_modules" / p / "package.json").is_file() for p in packages):
        assert NPM is not None
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            pytest.fail(f"npm ci failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return CLIENT_DIR / "client.js"


async def _run(script: Path, target: str, api_key: str) -> tuple[int, str, str]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(script),
        "--target",
        target,
        env=clean_env({"DATAMCP_API_KEY": api_key}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_node_client_runs_a_task_acks_events_and_decodes_error_details(
    tmp_path: Path, client_script: Path
) -> None:
    settings = make_settings(tmp_path, **auth_overrides())
    async with running_server(settings) as srv:
        code, out, err = await _run(client_script, srv.target, API_KEY)
        assert code == 0, out + err
        assert "TASK_STATE_SUCCEEDED" in out and '"n":2' in out
        assert "acked 3 events in order: 1,2,3" in out
        assert "google.rpc.ErrorInfo" in out and '"reason":"INVALID_TASK"' in out
        assert '"field":"task.capability"' in out
        assert out.strip().endswith("OK")
        # A wrong key is refused, and the client says so with a non-zero exit.
        code, out, err = await _run(client_script, srv.target, "wrong-key-0123456789abcdef")
        assert code == 1
        assert "node-client:" in err
