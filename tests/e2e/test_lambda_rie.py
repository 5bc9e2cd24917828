"""handlers.tasks.handler inside the real Lambda runtime emulator.

The emulator (aws-lambda-rie, the binary AWS ships inside the aws-sam-cli
wheel) runs ``python -m awslambdaric handlers.tasks.handler`` as the
runtime, exactly as a Lambda container image would, and takes invocations
over HTTP. The wheel is fetched at test time into ``.cache/`` (ignored by
git; the binary is never committed); the test skips only when that
download fails.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.uow import SqlUnitOfWork
from datamcp.core.agents.model import Task, TaskState, task_id_for
from tests.agent_plugins import PLUGINS
from tests.lambda_events import sqs_event, sqs_record, task_body
from tests.support import clean_env

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "lambda-rie"
INVOKE = "/2015-03-31/functions/function/invocations"


def emulator() -> Path:
    """The emulator binary for this machine, downloaded once into .cache/."""
    arch = "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"
    binary = CACHE / f"aws-lambda-rie-{arch}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    download = subprocess.run(
        [*command, "-d", str(CACHE), "aws-sam-cli"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wheels = sorted(CACHE.glob("aws_sam_cli-*.whl"))
    if download.returncode != 0 or not wheels:
        pytest.skip(f"cannot download aws-sam-cli for the emulator: {download.stderr[-300:]}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        data = wheel.read(f"samcli/local/rapid/aws-lambda-rie-{arch}")
    partial = binary.with_suffix(".part")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.rename(binary)
    for wheel_file in wheels:  # only the binary is kept
        wheel_file.unlink()
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Function:
    def __init__(self, url: str, database_url: str) -> None:
        self.url = url
        self.database_url = database_url

    def invoke(self, event: Any, timeout: float = 60) -> Any:
        request = urllib.request.Request(
            self.url + INVOKE, data=json.dumps(event).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())

    def stored(self, request_id: str, tenant: str = "default") -> Task | None:
        import asyncio

        async def get() -> Task | None:
            engine = create_engine(self.database_url)
            try:
                async with SqlUnitOfWork(engine) as tx:
                    task: Task | None = await tx.tasks.get(tenant, task_id_for(tenant, request_id))
                    return task
            finally:
                await engine.dispose()

        return asyncio.run(get())


@pytest.fixture
def function(tmp_path: Path, database_url: str) -> Iterator[Function]:
    binary = emulator()
    api, rie = free_port(), free_port()
    env = clean_env(
        {
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "30",
            "AWS_LAMBDA_FUNCTION_NAME": "datamcp-tasks",
            "LAMBDA_TASK_ROOT": str(ROOT),
            "DATAMCP_DATABASE_URL": database_url,
            "DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS),
            "DATAMCP_LOGGING_LEVEL": "WARNING",
        }
    )
    log = (tmp_path / "rie.log").open("w")
    runtime = [sys.executable, "-m", "awslambdaric", "handlers.tasks.handler"]
    proc = subprocess.Popen(
        [
            str(binary),
            *("--log-level", "error"),
            *("--runtime-interface-emulator-address", f"127.0.0.1:{rie}"),
            *("--runtime-api-address", f"127.0.0.1:{api}"),
            *runtime,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", rie), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "rie.log").read_text()) from None
                time.sleep(0.05)
        yield Function(f"http://127.0.0.1:{rie}", database_url)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def test_a_batch_with_one_bad_record_reports_exactly_that_record(function: Function) -> None:
    good = [sqs_record(task_body("echo", {"n": i}, request_id=f"rie-{i}")) for i in range(3)]
    bad = sqs_record(task_body("math.add", {"a": "x"}, request_id="rie-bad"))
    answer = function.invoke(sqs_event([good[0], good[1], bad, good[2]]))
    assert answer == {"batchItemFailures": [{"itemIdentifier": bad["messageId"]}]}
    for i in range(3):
        task = function.stored(f"rie-{i}")
        assert task is not None and task.state is TaskState.SUCCEEDED and task.result == {"n": i}
    assert function.stored("rie-bad") is None


def test_a_duplicate_delivery_has_no_second_effect(function: Function, tmp_path: Path) -> None:
    marker = tmp_path / "effects.txt"
    body = task_body("test.slow", {"seconds": 0.1, "marker": str(marker)})
    record = sqs_record(body, message_id="rie-dup")
    assert function.invoke(sqs_event([record])) == {"batchItemFailures": []}
    redelivered = sqs_record(body, message_id="rie-dup", receive_count=2)
    assert function.invoke(sqs_event([redelivered])) == {"batchItemFailures": []}
    assert len(marker.read_text().splitlines()) == 1
    task = function.stored("sqs:rie-dup")
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
    # A run in another process (the emulator's runtime), not in this one.
    assert marker.read_text().split()[2] != str(os.getpid())
