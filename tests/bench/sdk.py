"""Section "sdk": what ``datamcp_client`` costs on the client over the raw stubs.

One full server (``datamcp serve``, API-key auth, SQLite) and one client
process (``tests.bench.sdk_load``) that alternates the same work through the
raw generated stubs and through the SDK (the order alternating), best of
``BENCH_SDK_ROUNDS`` (6) rounds per side:

1. ``BENCH_SDK_CALLS`` (500) sequential ``ExecuteTask(echo)`` calls;
2. a subscribe + ack loop over 1,000 events (``BENCH_SDK_EVENTS``) published
   before each round (publishing is not timed).

Reported: client CPU per call/event and wall time, SDK / raw. Target: the SDK
adds at most 10% client-side time (ratio <= 1.10).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tests.bench.common import BenchConfig, run_client, warn, write_result
from tests.bench.full_server import full_server, new_api_key

NAME = "sdk: datamcp_client against the raw generated stubs"
RESULT_FILE = "sdk.json"
TARGET = 1.10


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text else default


def run(config: BenchConfig) -> dict[str, Any]:
    rounds = _env_int("BENCH_SDK_ROUNDS", 6)
    calls = _env_int("BENCH_SDK_CALLS", 500)
    events = _env_int("BENCH_SDK_EVENTS", 1000)
    api_key = new_api_key()
    with tempfile.TemporaryDirectory(prefix="bench-sdk-") as tmp:
        with full_server(Path(tmp), api_key, sample_ratio=0.1) as server:
            line = run_client(
                "tests.bench.sdk_load",
                [f"127.0.0.1:{server.port}", str(rounds), str(calls), str(events)],
                timeout=900,
                api_key=api_key,
            )
    measured = json.loads(line)
    best = measured["best"]
    result: dict[str, Any] = {"calls": calls, "events": events, "rounds": rounds, "ratios": {}}
    print(
        f"  {'':28} {'raw cpu':>10} {'sdk cpu':>10} {'ratio':>7} {'raw wall':>10} "
        f"{'sdk wall':>10} {'ratio':>7}"
    )
    for key, count, unit in (("execute", calls, "call"), ("subscribe", events, "event")):
        raw_cpu, raw_wall = best[f"{key}_raw"]
        sdk_cpu, sdk_wall = best[f"{key}_sdk"]
        cpu_ratio, wall_ratio = sdk_cpu / raw_cpu, sdk_wall / raw_wall
        label = "ExecuteTask(echo)" if key == "execute" else f"subscribe+ack {events} events"
        print(
            f"  {label:28} {raw_cpu / count * 1e6:8.0f}us {sdk_cpu / count * 1e6:8.0f}us "
            f"{cpu_ratio:7.2f} {raw_wall / count * 1e6:8.0f}us {sdk_wall / count * 1e6:8.0f}us "
            f"{wall_ratio:7.2f}   (per {unit})",
            flush=True,
        )
        result["ratios"][key] = {
            "client_cpu_sdk_over_raw": round(cpu_ratio, 3),
            "wall_sdk_over_raw": round(wall_ratio, 3),
            "raw_cpu_us": round(raw_cpu / count * 1e6, 1),
            "sdk_cpu_us": round(sdk_cpu / count * 1e6, 1),
        }
        if cpu_ratio > TARGET:
            warn(
                f"{label}: the SDK costs {cpu_ratio:.2f}x the raw stubs' client CPU "
                f"(target <= {TARGET})"
            )
    write_result(config, RESULT_FILE, result)
    return result


if __name__ == "__main__":
    run(BenchConfig.from_env())
