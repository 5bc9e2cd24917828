"""Helpers shared by the tests: settings, in-process servers, subprocess servers,
token minting and rich-error decoding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from datamcp.bootstrap import App
from datamcp.config.settings import Settings, load_settings
from datamcp.entrypoints.grpc.server import MeshServer, Registration

API_KEY = "test-api-key-0123456789abcdef"
OPERATOR_KEY = "operator-key-0123456789abcdef"
HS256_SECRET = "s" * 48


def api_key_config(key: str, subject: str, tenant: str, roles: Sequence[str]) -> dict[str, Any]:
    return {
        "name": subject,
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "subject": subject,
        "tenant": tenant,
        "roles": list(roles),
    }


def auth_overrides() -> dict[str, Any]:
    """API keys for a plain user and an operator, plus HS256 JWTs."""
    return {
        "auth.api_keys": [
            api_key_config(API_KEY, "alice", "acme", ["user"]),
            api_key_config(OPERATOR_KEY, "olga", "acme", ["operator"]),
        ],
        "auth.jwt.hs256_secret": HS256_SECRET,
    }


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "database_url": database_url,
        "health.interval": 0.2,
        "health.check_timeout": 1.0,
        "server.shutdown_grace": 2.0,
        "logging.format": "json",
    }
    values.update(overrides)
    return load_settings(overrides=values, environ={})


def hs256_token(
    *,
    sub: str = "bob",
    tenant: str = "acme",
    roles: Sequence[str] = ("user",),
    expires_in: float = 300,
    secret: str = HS256_SECRET,
    **claims: Any,
) -> str:
    payload = {
        "sub": sub,
        "tenant": tenant,
        "roles": list(roles),
        "exp": int(time.time() + expires_in),
    }
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


@dataclass
class RunningServer:
    server: MeshServer
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> aio.Channel:
        return aio.insecure_channel(self.target)


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, extra: Sequence[Registration] = ()
) -> AsyncIterator[RunningServer]:
    app = await App.create(settings)
    server = MeshServer(app, extra)
    port = await server.start()
    try:
        yield RunningServer(server, port)
    finally:
        await server.stop(0.5)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def apikey(key: str = API_KEY) -> tuple[tuple[str, str]]:
    return (("authorization", f"ApiKey {key}"),)


def rich_details(error: grpc.RpcError) -> dict[str, Any]:
    """Unpack google.rpc.Status details into {type name: message}."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    if status is None:
        return out
    for detail in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ResourceInfo,
            error_details_pb2.DebugInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out[cls.__name__] = message
    return out


# --- subprocess servers ---------------------------------------------------------


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> list[dict[str, Any]]:
        return list(self.lines)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def datamcp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "datamcp.entrypoints.cli", *args]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAMCP_")}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def server_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> Iterator[ServerProcess]:
    """Start ``datamcp serve`` and wait for its 'datamcp serving' log line."""
    proc = subprocess.Popen(
        datamcp_command("serve", *args),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(env),
    )
    lines: list[dict[str, Any]] = []
    ready = threading.Event()
    port_box: list[int] = []

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = {"message": raw.rstrip()}
            lines.append(entry)
            if entry.get("message") == "datamcp serving":
                port_box.append(int(entry["port"]))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout) or not port_box:
            proc.kill()
            raise AssertionError(f"server did not start: {lines}")
        sp = ServerProcess(proc, port_box[0], lines, reader)
        yield sp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
