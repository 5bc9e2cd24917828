"""The real `datamcp` process: start-up validation, SIGTERM, and the CLI client."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2 as std
from grpc_health.v1 import health_pb2_grpc as std_grpc

from tests.support import clean_env, datamcp_command, server_process


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60):  # type: ignore[no-untyped-def]
    return subprocess.run(
        datamcp_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(env),
        stdin=subprocess.DEVNULL,
    )


def test_sigterm_flips_health_to_not_serving_then_exits_zero(tmp_path: Path) -> None:
    with server_process("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = std_grpc.HealthStub(channel)
            watch = stub.Watch(std.HealthCheckRequest(service="datamcp.v1.HealthService"))
            assert next(watch).status == std.HealthCheckResponse.SERVING
            server.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == std.HealthCheckResponse.NOT_SERVING
            watch.cancel()
        try:
            assert server.proc.wait(20) == 0
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 20 s after SIGTERM; its log: {server.logs()[-20:]}")
    messages = [line.get("message") for line in server.logs()]
    assert messages.index("shutting down") < messages.index("stopped")


@pytest.mark.parametrize(
    ("args", "config", "env", "expected"),
    [
        (["--listen", "nowhere"], None, {}, "is not HOST:PORT"),
        (["--listen", "0.0.0.0:0"], None, {}, "refusing to bind 0.0.0.0 without authentication"),
        ([], "[server]\nshutdown_grace = -1\n", {}, "server.shutdown_grace"),
        ([], "[server]\nshutdwn_grace = 1\n", {}, "unknown setting 'server.shutdwn_grace'"),
        ([], "listen = \n", {}, "cannot be read as TOML"),
        ([], None, {"DATAMCP_RATE_LIMIT_RATE": "fast"}, "DATAMCP_RATE_LIMIT_RATE='fast'"),
        (["--tls-cert", "/nonexistent/cert.pem"], None, {}, "does not exist"),
        ([], "[[auth.api_keys]]\nname = 'k'\nsha256 = 'plain-key'\n", {}, "datamcp auth hash-key"),
        ([], "[auth.jwt]\nhs256_secret = 'short'\n", {}, "at least 32 characters"),
    ],
    ids=[
        "bad-listen",
        "public-without-auth",
        "negative-grace",
        "unknown-key",
        "bad-toml",
        "bad-env",
        "missing-cert",
        "plain-api-key",
        "weak-secret",
    ],
)
def test_invalid_configuration_exits_2_with_an_actionable_message(
    tmp_path: Path, args: list[str], config: str | None, env: dict[str, str], expected: str
) -> None:
    if config is not None:
        (tmp_path / "datamcp.toml").write_text(config)
        args = [*args, "--config", str(tmp_path / "datamcp.toml")]
    result = _run("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    result = _run(
        "serve", "--listen", "bad", "--tls-key", "/nope.key", env={"DATAMCP_HEALTH_INTERVAL": "x"}
    )
    assert result.returncode == 2
    for fragment in ("listen", "tls.key_file", "DATAMCP_HEALTH_INTERVAL"):
        assert fragment in result.stderr


def test_unreachable_database_at_start_exits_1(tmp_path: Path) -> None:
    result = _run(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--database-url",
        "postgresql://nobody@127.0.0.1:9/nothing",
    )
    assert result.returncode == 1
    assert "is not usable" in result.stderr


def test_insecure_flag_allows_public_bind_validation() -> None:
    from datamcp.config.settings import load_settings

    settings = load_settings(overrides={"listen": "0.0.0.0:0", "insecure": True}, environ={})
    assert settings.server.host == "0.0.0.0"


def test_environment_configures_the_server(tmp_path: Path) -> None:
    env = {"DATAMCP_LISTEN": "127.0.0.1:0", "DATAMCP_DATA_DIR": str(tmp_path / "envdir")}
    with server_process(env=env) as server:
        assert (tmp_path / "envdir" / "datamcp.db").exists()
        assert server.stop() == 0


def test_health_cli_prints_table_json_and_watch(tmp_path: Path) -> None:
    with server_process("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)) as server:
        table = _run("health", "--target", server.target)
        as_json = _run("health", "--target", server.target, "--json")
        watcher = subprocess.Popen(
            datamcp_command("health", "--target", server.target, "--watch", "--json"),
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        server.proc.send_signal(signal.SIGTERM)
        rest, _ = watcher.communicate(timeout=20)
        assert server.proc.wait(20) == 0
    assert table.returncode == 0, table.stderr
    assert "database *" in table.stdout and "HEALTHY" in table.stdout
    report = json.loads(as_json.stdout)
    assert report["status"] == "HEALTHY"
    assert first["serving"][""] is True
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["status"] == "UNHEALTHY"
    assert watcher.returncode == 1


def test_health_cli_reports_unreachable_server() -> None:
    result = _run("health", "--target", "127.0.0.1:9", "--timeout", "1")
    assert result.returncode == 6  # unreachable: try again later
    assert "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr


def test_version_db_upgrade_and_hash_key(tmp_path: Path) -> None:
    version = _run("version")
    assert version.returncode == 0 and version.stdout.startswith("datamcp ")
    from alembic.script import ScriptDirectory

    from datamcp.adapters.sqlalchemy.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    upgraded = _run("db", "upgrade", "--data-dir", str(tmp_path))
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.splitlines() == [
        f"database upgraded from empty to {head}",
        "memory store primary: schema ready",
    ]
    again = _run("db", "upgrade", "--data-dir", str(tmp_path))
    assert again.stdout.splitlines()[0] == f"database at revision {head}"
    hashed = _run("auth", "hash-key", "k" * 32)
    import hashlib

    assert hashed.stdout.strip() == hashlib.sha256(b"k" * 32).hexdigest()
    assert _run("auth", "hash-key", "short").returncode == 2


def test_server_restart_reuses_the_data_dir(tmp_path: Path) -> None:
    args = ("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path))
    for _ in range(2):
        with server_process(*args) as server:
            started = time.monotonic()
            with grpc.insecure_channel(server.target) as channel:
                reply = std_grpc.HealthStub(channel).Check(std.HealthCheckRequest())
            assert reply.status == std.HealthCheckResponse.SERVING
            assert server.stop() == 0
            assert time.monotonic() - started < 15
