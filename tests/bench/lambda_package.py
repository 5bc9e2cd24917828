"""The built Lambda package under the runtime emulator (part of the serverless section).

What a deployed container pays, measured the way Lambda runs it:
``.build/lambda`` (``make lambda-package``) with the runtime's Python 3.12
behind the real emulator (``tests/lambda_rie.py``), configured as the
template configures it (``database_migrate = verify``, the database migrated
beforehand by the migration function), SQLite in a temporary directory.

- handler import: ``import handlers.tasks`` in a fresh interpreter with only
  the package on its path (the emulator's own init report does not include
  it), ``BENCH_IMPORT_RUNS`` times, median;
- cold start: a new emulator's first 10-record batch of echo tasks, wall
  time from the request to the answer (runtime start, imports, app build,
  the batch), 3 new emulators, median;
- warm batch: the same batch on a warm container, ``BENCH_SERVERLESS_ROUNDS``
  times, median and p90.

For comparison the same runs go through the source tree under this
interpreter (how the handlers were measured before there was a package).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests import lambda_rie
from tests.bench.common import warn

BATCH = 10
COLD_RUNS = 3


def echo_batch(tag: str = "") -> dict[str, Any]:
    """A 10-record SQS batch of echo tasks, new message ids each time."""
    tag = tag or uuid.uuid4().hex
    return {
        "Records": [
            {
                "messageId": f"{tag}-{i}",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:datamcp-tasks",
                "attributes": {"ApproximateReceiveCount": "1"},
                "body": json.dumps({"capability": "echo", "input": {"n": i, "tag": tag}}),
            }
            for i in range(BATCH)
        ]
    }


def _import_ms(python: str, paths: list[str], runs: int, site: bool) -> float:
    code = "import time; t = time.perf_counter(); import handlers.tasks; "
    code += "print((time.perf_counter() - t) * 1000)"
    samples = []
    for _ in range(runs):
        proc = subprocess.run(
            [python, *([] if site else ["-S"]), "-c", code],
            env={"PYTHONPATH": ":".join(paths)},
            cwd=paths[0],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        samples.append(float(proc.stdout.strip()))
    return statistics.median(samples)


def _migrate(url: str) -> None:
    env = {"DATAMCP_DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "datamcp.entrypoints.cli", "db", "upgrade"],
        env={**_base_env(), **env},
        capture_output=True,
        check=True,
        timeout=120,
    )


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("DATAMCP_")}


def _measure(tmp: Path, label: str, rounds: int, import_runs: int, **how: Any) -> dict[str, Any]:
    cold: list[float] = []
    warm: list[float] = []
    for run in range(COLD_RUNS):
        db = tmp / f"{label}-{run}.db"
        url = f"sqlite+aiosqlite:///{db}"
        _migrate(url)
        env = {"DATAMCP_DATABASE_URL": url, "DATAMCP_DATABASE_MIGRATE": "verify"}
        env["DATAMCP_LOGGING_LEVEL"] = "WARNING"
        with lambda_rie.emulated("handlers.tasks.handler", env, tmp / f"{label}.log", **how) as fn:
            started = time.perf_counter()
            answer = fn.invoke(echo_batch())
            cold.append((time.perf_counter() - started) * 1000)
            assert answer == {"batchItemFailures": []}, answer
            if run == 0:
                for _ in range(rounds):
                    started = time.perf_counter()
                    fn.invoke(echo_batch())
                    warm.append((time.perf_counter() - started) * 1000)
    if "python" in how:
        python, paths, site = how["python"], [str(lambda_rie.ROOT)], True
    else:
        version, python = lambda_rie.runtime()
        paths = [str(lambda_rie.PACKAGE), str(lambda_rie.interface_client(version))]
        site = False
    return {
        "handler_import_ms": _import_ms(python, paths, import_runs, site),
        "cold_first_batch_ms": statistics.median(cold),
        "warm_batch_ms": statistics.median(warm),
        "warm_batch_p90_ms": statistics.quantiles(warm, n=10)[-1],
    }


def run(tmp: Path, rounds: int, import_runs: int) -> dict[str, Any]:
    try:
        lambda_rie.build_package()
        package = _measure(tmp, "package", rounds, import_runs)
    except lambda_rie.Unavailable as exc:
        warn(f"lambda package under the emulator: skipped ({exc})")
        return {}
    source = _measure(tmp, "source", rounds, import_runs, python=sys.executable)
    report = json.loads((lambda_rie.PACKAGE.parent / "lambda.json").read_text())
    mib = 1024 * 1024
    print(
        f"lambda package {report['runtime']} {report['architecture']}: "
        f"{report['unzipped_bytes'] / mib:.1f} MiB unzipped, "
        f"{report['zipped_bytes'] / mib:.1f} MiB zipped"
    )
    print(
        f"{'emulator, tasks handler':<34}{'import ms':>10}{'cold 1st batch':>16}{'warm batch':>12}"
    )
    for label, figures in (
        ("built package, python3.12", package),
        ("source tree, this Python", source),
    ):
        print(
            f"{label:<34}{figures['handler_import_ms']:>10.0f}"
            f"{figures['cold_first_batch_ms']:>13.0f} ms"
            f"{figures['warm_batch_ms']:>9.1f} ms  (p90 {figures['warm_batch_p90_ms']:.1f})"
        )
    return {"package": package, "source": source, "size": report}
