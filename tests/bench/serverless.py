"""Section "serverless": Lambda handler cold imports and a warm SQS batch.

1. Cold import: each handler module (``handlers.tasks``, ``handlers.events``,
   ``handlers.schedule``) and, as the baseline, the gRPC server module
   (``datamcp.entrypoints.grpc.server``) is imported in a fresh interpreter
   with ``-X importtime``, ``BENCH_IMPORT_RUNS`` times (default 7, median
   kept). The table shows milliseconds, the ratio to the server module
   (target <= 0.5) and the third-party packages pulled with their cost;
   grpc must not be among a handler's. For the record (no target), the
   first invocation of the tasks handler in a fresh process is timed too:
   module import, then one 1-record batch, which builds the app (bootstrap
   imports, database connect and migrations on a new SQLite file).
2. Warm batch: in one process, with one app (SQLite in a temporary
   directory), a 10-record SQS batch of ``echo`` tasks through
   ``handlers.tasks.handler`` against the same 10 tasks submitted to the
   core directly and waited for to their end (``AgentManager.submit``,
   which returns once the task is stored, then ``wait``; concurrently, on
   the same loop and app). Target: handler/core <= 1.5. For information it
   also times ``AgentManager.execute``, which may start a task while its
   insert is still on the way to the store (so an echo task's insert and
   final state share one commit); a handler cannot take that shortcut,
   because it may only run a record's task once its claim has committed
   (exactly once under redelivery), so it needs two commits to execute's
   one. ``BENCH_SERVERLESS_ROUNDS`` rounds (default 60) alternate the three
   after 10 unmeasured rounds of each; medians are compared.

3. The built Lambda package under the runtime emulator
   (``tests/bench/lambda_package.py``): package size, handler import, a cold
   container's first 10-record batch and warm batches, against the source
   tree under this interpreter.

About 60 s with the defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.bench import lambda_package
from tests.bench.common import BenchConfig, warn, write_result
from tests.bench.procs import REPO_ROOT

NAME = "serverless: Lambda handler cold imports and a warm SQS batch"
RESULT_FILE = "serverless.json"
HANDLERS = ("handlers.tasks", "handlers.events", "handlers.schedule")
SERVER = "datamcp.entrypoints.grpc.server"
IMPORT_TARGET = 0.5
BATCH_TARGET = 1.5
BATCH = 10
WARMUP_ROUNDS = 10


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text else default


def import_profile(module: str) -> tuple[float, dict[str, float]]:
    """(ms to import ``module`` in a fresh interpreter, ms per third-party package)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    total = 0.0
    packages: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if not cumulative.isdigit():
            continue
        us = int(cumulative)
        if name == module:
            total = us / 1000
        top = name.strip().split(".")[0]
        indent = len(name) - len(name.lstrip())
        # Only the outermost import of a package counts (its cumulative time).
        if (
            top not in sys.stdlib_module_names
            and top not in ("datamcp", "handlers", "_")
            and indent <= packages.get(f"_indent_{top}", indent)
        ):
            packages[top] = max(packages.get(top, 0.0), us / 1000)
            packages[f"_indent_{top}"] = indent
    return total, {k: v for k, v in packages.items() if not k.startswith("_indent_")}


def cold_first_invocation(tmp: Path) -> dict[str, float]:
    code = """
import json, time
t0 = time.perf_counter()
import handlers.tasks
t1 = time.perf_counter()
from handlers import _runtime
event = {"Records": [{"messageId": "m", "eventSource": "aws:sqs", "attributes": {},
          "body": json.dumps({"capability": "echo", "input": 1})}]}
answer = handlers.tasks.handler(event, _runtime.LocalContext(30))
t2 = time.perf_counter()
assert answer == {"batchItemFailures": []}, answer
print(json.dumps({"import_ms": (t1 - t0) * 1000, "first_invocation_ms": (t2 - t1) * 1000}))
_runtime.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMCP_")}
    env["DATAMCP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / f'cold-{uuid.uuid4().hex}.db'}"
    env["DATAMCP_LOGGING_LEVEL"] = "ERROR"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def warm_batches(tmp: Path, rounds: int) -> dict[str, float]:
    os.environ["DATAMCP_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / 'warm.db'}"
    os.environ["DATAMCP_LOGGING_LEVEL"] = "ERROR"
    from datamcp.core.agents.model import TaskSpec, TaskState
    from handlers import _runtime, tasks

    async def core(tag: str) -> None:
        app = await _runtime.app()
        done = await asyncio.gather(
            *(
                app.agents.execute(
                    "default", TaskSpec(capability="echo", input={"n": i, "tag": tag})
                )
                for i in range(BATCH)
            )
        )
        assert all(t.state is TaskState.SUCCEEDED for t in done)

    async def core_submit(tag: str) -> None:
        app = await _runtime.app()

        async def one(i: int) -> TaskState:
            spec = TaskSpec(capability="echo", input={"n": i, "tag": tag})
            task, _ = await app.agents.submit("default", spec)
            return (await app.agents.wait("default", task.id, 30)).state

        states = await asyncio.gather(*(one(i) for i in range(BATCH)))
        assert all(s is TaskState.SUCCEEDED for s in states)

    def timed_handler() -> float:
        ev = lambda_package.echo_batch()
        started = time.perf_counter()
        answer = tasks.handler(ev, _runtime.LocalContext(60))
        elapsed = time.perf_counter() - started
        assert answer == {"batchItemFailures": []}, answer
        return elapsed * 1000

    def timed_core() -> float:
        started = time.perf_counter()
        _runtime.loop().run_until_complete(core_submit(uuid.uuid4().hex))
        return (time.perf_counter() - started) * 1000

    def timed_execute() -> float:
        started = time.perf_counter()
        _runtime.loop().run_until_complete(core(uuid.uuid4().hex))
        return (time.perf_counter() - started) * 1000

    handler_ms: list[float] = []
    core_ms: list[float] = []
    execute_ms: list[float] = []
    # The handler's EMF metrics go to stdout, as in Lambda: keep them out of the report.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for _ in range(WARMUP_ROUNDS):
                timed_handler()
                timed_core()
                timed_execute()
            for _ in range(rounds):
                handler_ms.append(timed_handler())
                core_ms.append(timed_core())
                execute_ms.append(timed_execute())
    finally:
        _runtime.shutdown()
        os.environ.pop("DATAMCP_DATABASE_URL", None)
        os.environ.pop("DATAMCP_LOGGING_LEVEL", None)
    return {
        "handler_ms": statistics.median(handler_ms),
        "core_ms": statistics.median(core_ms),
        "handler_p90_ms": statistics.quantiles(handler_ms, n=10)[-1],
        "core_p90_ms": statistics.quantiles(core_ms, n=10)[-1],
        "execute_ms": statistics.median(execute_ms),
    }


def run(config: BenchConfig) -> Mapping[str, Any]:
    runs = _env_int("BENCH_IMPORT_RUNS", 7)
    rounds = _env_int("BENCH_SERVERLESS_ROUNDS", 60)
    imports: dict[str, dict[str, Any]] = {}
    for module in (*HANDLERS, SERVER):
        samples = [import_profile(module) for _ in range(runs)]
        ms = statistics.median(s[0] for s in samples)
        heavy = {k: round(v, 1) for k, v in samples[-1][1].items() if v >= 1.0}
        imports[module] = {"ms": ms, "packages": dict(sorted(heavy.items(), key=lambda kv: -kv[1]))}
    server_ms = imports[SERVER]["ms"]
    print(f"{'module':<34}{'import ms':>10}{'x server':>10}  third-party packages (ms)")
    failed = False
    for module, info in imports.items():
        ratio = info["ms"] / server_ms
        info["ratio"] = ratio
        pulled = ", ".join(f"{k} {v:.0f}" for k, v in info["packages"].items()) or "-"
        print(f"{module:<34}{info['ms']:>10.1f}{ratio:>10.2f}  {pulled}")
        if module != SERVER:
            grpc_pulled = any(p.startswith("grpc") for p in info["packages"])
            info["grpc"] = grpc_pulled
            if grpc_pulled or ratio > IMPORT_TARGET:
                failed = True
                warn(f"{module}: import {ratio:.2f}x the server (target <= {IMPORT_TARGET})")
    with tempfile.TemporaryDirectory(prefix="bench-serverless-") as tmp:
        cold = cold_first_invocation(Path(tmp))
        print(
            f"cold tasks handler: import {cold['import_ms']:.0f} ms + first 1-record batch "
            f"(app build, migrations, task) {cold['first_invocation_ms']:.0f} ms"
        )
        warm = warm_batches(Path(tmp), rounds)
        emulated = lambda_package.run(Path(tmp), min(rounds, 30), runs)
    batch_ratio = warm["handler_ms"] / warm["core_ms"]
    print(
        f"warm {BATCH}-record batch: handler {warm['handler_ms']:.1f} ms "
        f"(p90 {warm['handler_p90_ms']:.1f}) vs core submit+wait {warm['core_ms']:.1f} ms "
        f"(p90 {warm['core_p90_ms']:.1f}): {batch_ratio:.2f}x (target <= {BATCH_TARGET}); "
        f"core execute {warm['execute_ms']:.1f} ms: "
        f"{warm['handler_ms'] / warm['execute_ms']:.2f}x (information)"
    )
    if batch_ratio > BATCH_TARGET:
        failed = True
        warn(f"warm batch {batch_ratio:.2f}x the core (target <= {BATCH_TARGET})")
    result = {
        "imports": imports,
        "cold_first_invocation": cold,
        "warm_batch": {**warm, "ratio": batch_ratio, "records": BATCH, "rounds": rounds},
        "emulator": emulated,
        "targets_met": not failed,
    }
    write_result(config, RESULT_FILE, result)
    return result
