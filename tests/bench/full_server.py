"""The full stack: the real ``datamcp serve`` with auth, rate limiting and tracing on.

The config turns on everything a production call passes through: an API key
(so every call is authenticated and authorized), a rate limiter sized never
to trigger (so it costs its bookkeeping but rejects nothing), and tracing
with exporter ``none`` (spans are still created by the OpenTelemetry
interceptor, just not exported). Logging stays at INFO because the port is
learned from the "datamcp serving" log line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

from tests.bench.procs import ServerProcess

SERVING_MESSAGE = "datamcp serving"


def new_api_key() -> str:
    """A fresh random key per run; only its digest goes into the config file."""
    return "bench-" + secrets.token_urlsafe(32)


def write_config(
    directory: Path,
    api_key: str,
    sample_ratio: float = 1.0,
    extra_toml: str = "",
    top_level: str = "",
) -> Path:
    """Write the benchmark's TOML config into ``directory`` and return its path.

    ``extra_toml`` is appended as is (further tables a section needs, e.g.
    ``[agents]``); ``top_level`` (keys outside any table) goes first.
    """
    digest = hashlib.sha256(api_key.encode("utf-8")).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.toml"
    path.write_text(
        f"""\
{top_level}
[[auth.api_keys]]
name = "bench"
sha256 = "{digest}"
subject = "bench"
tenant = "bench"
roles = ["operator"]

[rate_limit]
enabled = true
rate = 1000000.0
burst = 1000000

[tracing]
exporter = "none"
sample_ratio = {sample_ratio}

[logging]
level = "INFO"
format = "json"

[server]
shutdown_grace = 2.0
"""
        + extra_toml,
        encoding="utf-8",
    )
    return path


def parse_serving_port(line: str) -> int | None:
    """The port from the JSON "datamcp serving" log line, else None."""
    if SERVING_MESSAGE not in line:
        return None
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if entry.get("message") != SERVING_MESSAGE:
        return None
    port = entry.get("port")
    return port if isinstance(port, int) and port > 0 else None


def full_server(
    workdir: Path, api_key: str, sample_ratio: float = 1.0, extra_toml: str = ""
) -> ServerProcess:
    """The real server, bound to 127.0.0.1 port 0, with its data under ``workdir``.

    ``sample_ratio`` is the share of new traces recorded (1.0: every call);
    ``extra_toml`` is added to its config file.
    """
    config = write_config(workdir, api_key, sample_ratio, extra_toml)
    argv = [
        sys.executable,
        "-m",
        "datamcp.entrypoints.cli",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(workdir / "data"),
        "--config",
        str(config),
    ]
    # DATAMCP_* variables of the caller's shell would override the config file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMCP_")}
    return ServerProcess(
        "full server", argv, port_stream="stderr", parse_port=parse_serving_port, env=env
    )
