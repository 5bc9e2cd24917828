"""What every benchmark section shares: run settings, the section type, output."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.procs import REPO_ROOT


@dataclass(frozen=True, slots=True)
class BenchConfig:
    """Settings of one ``python -m tests.bench`` run.

    Attributes:
        seconds: measured window of each load run (env ``BENCH_SECONDS``).
        warmup: unmeasured lead-in before each window, so connection set-up,
            first-call caches and the like stay out of the numbers.
        out_dir: where sections write their JSON results.
    """

    seconds: float = 5.0
    warmup: float = 1.0
    out_dir: Path = REPO_ROOT / ".bench"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BenchConfig:
        """Read ``BENCH_SECONDS``.

        Raises:
            ValueError: not a positive number.
        """
        env = os.environ if environ is None else environ
        text = env.get("BENCH_SECONDS", "").strip()
        if not text:
            return cls()
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"BENCH_SECONDS must be a number of seconds, got {text!r}") from None
        if not seconds > 0:
            raise ValueError(f"BENCH_SECONDS must be > 0, got {text!r}")
        return cls(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Section:
    """A named benchmark; ``run`` prints its report and returns its JSON result."""

    name: str
    run: Callable[[BenchConfig], Mapping[str, Any]]


def write_result(config: BenchConfig, file_name: str, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as ``<out_dir>/<file_name>`` (creating the directory)."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    path = config.out_dir / file_name
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def warn(message: str) -> None:
    """A warning nobody reading the table can miss."""
    bar = "!" * 78
    print(f"{bar}\n!! WARNING: {message}\n{bar}", flush=True)


#: Environment variable that carries the API key to a client process (kept out
#: of the command line, so it does not show in ``ps``).
API_KEY_ENV = "BENCH_API_KEY"


def freeze_client_heap() -> None:
    """Keep a load client's own garbage collector out of what it measures.

    A full collection in the client was a 12 ms pause inside the latency
    window, recorded as if the server had been slow. Freezing what the
    client built at start-up (``gc.freeze``, as the server does) leaves its
    later collections only new objects to scan. Every side of a comparison
    runs the same client, so this changes noise, not ratios.
    """
    gc.collect()
    gc.freeze()


def run_client(module: str, args: list[str], *, timeout: float, api_key: str | None) -> str:
    """Run ``python -m module *args`` and return the last line it printed.

    Load clients run in their own process, so the server under test never
    shares an interpreter with the load.

    Raises:
        RuntimeError: the client timed out, failed, or printed nothing.
    """
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if api_key:
        env[API_KEY_ENV] = api_key
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has already killed the child
        raise RuntimeError(f"{module} {args[0]} timed out after {exc.timeout}s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {args[0]} failed (exit {done.returncode}):\n{done.stderr}")
    return lines[-1]
