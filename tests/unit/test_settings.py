"""Settings precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamcp.config.settings import load_settings
from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.errors import ConfigError
from datamcp.core.memory.model import NamespacePolicy, Strategy
from datamcp.core.streams import StreamPolicy


def test_defaults_are_loopback_sqlite_in_data_dir() -> None:
    s = load_settings(environ={})
    assert (s.server.host, s.server.port) == ("127.0.0.1", 50051)
    assert s.database_url == "sqlite+aiosqlite:///.datamcp/datamcp.db"
    assert not s.auth.enabled and s.rate_limit.enabled


def test_precedence_default_file_env_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'listen = "127.0.0.1:1"\n[server]\nshutdown_grace = 3\n[rate_limit]\nrate = 5\n'
    )
    env = {"DATAMCP_LISTEN": "127.0.0.1:2", "DATAMCP_SERVER_SHUTDOWN_GRACE": "4"}
    s = load_settings(config_file=config, environ=env, overrides={"listen": "127.0.0.1:3"})
    assert s.server.port == 3  # flag beats env beats file
    assert s.server.shutdown_grace == 4.0  # env beats file
    assert s.rate_limit.default.rate == 5.0  # file beats default


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[health]\ninterval = 9\n")
    s = load_settings(environ={"DATAMCP_CONFIG": str(config)})
    assert s.health.interval == 9.0


def test_json_settings_from_environment() -> None:
    env = {
        "DATAMCP_HEALTH_DEPENDENCIES": '[{"name": "x", "target": "tcp://127.0.0.1:1"}]',
        "DATAMCP_RATE_LIMIT_METHODS": '{"/a.B/C": {"rate": 1, "burst": 2}}',
    }
    s = load_settings(environ=env)
    assert s.health.dependencies[0].name == "x"
    assert s.rate_limit.methods["/a.B/C"].burst == 2


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={"DATAMCP_SERVER_COMPRESSION": "brotli"},
            overrides={"listen": "x", "server.max_concurrent_rpcs": -1},
        )
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 3
    assert "brotli" in text and "HOST:PORT" in text and "max_concurrent_rpcs" in text


def test_public_bind_needs_auth_or_insecure() -> None:
    with pytest.raises(ConfigError, match="refusing to bind"):
        load_settings(environ={}, overrides={"listen": "0.0.0.0:1"})
    assert load_settings(environ={}, overrides={"listen": "[::1]:1"}).server.host == "::1"
    authed = load_settings(
        environ={}, overrides={"listen": "0.0.0.0:1", "auth.jwt.hs256_secret": "k" * 40}
    )
    assert authed.auth.enabled


def test_tls_key_without_cert_is_rejected(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(ConfigError, match="together"):
        load_settings(environ={}, overrides={"tls.key_file": str(key)})


def test_dependency_targets_are_validated() -> None:
    with pytest.raises(ConfigError, match="tcp://host:port"):
        load_settings(environ={}, overrides={"health.dependencies": [{"target": "ftp://x"}]})


def test_bounds_and_choices_come_from_the_field_table() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={"DATAMCP_LOGGING_LEVEL": "loud"},
            overrides={"server.workers": 65, "tracing.sample_ratio": 2, "events.max_batch": 0},
        )
    text = "\n".join(err.value.problems)
    assert "server.workers" in text and "between 1 and 64" in text
    assert "tracing.sample_ratio" in text and "between 0 and 1.0" in text
    assert "events.max_batch" in text and "must be >= 1" in text
    assert "'loud' is not one of debug, info, warning, error" in text
    assert load_settings(environ={"DATAMCP_LOGGING_LEVEL": "debug"}).logging.level == "DEBUG"


def test_agents_settings_hold_the_core_task_policy() -> None:
    s = load_settings(environ={"DATAMCP_AGENTS_QUEUE_SIZE": "7"})
    assert s.agents.policy == TaskPolicy(
        queue_size=7,
        stale_after=s.replicas.stale_after,
        orphan_interval=s.replicas.check_interval,
    )
    assert s.streams == StreamPolicy()  # the core's defaults are the settings' defaults


def test_memory_policies_and_schedules_are_parsed_once_by_the_core() -> None:
    s = load_settings(
        environ={},
        overrides={
            "memory.policies": [{"prefix": "a", "strategy": "MERGE", "tie_break": "manual"}],
            "memory.schedules": [{"name": "n", "cron": "* * * * *", "strategy": "merge"}],
        },
    )
    assert s.memory.policies == (NamespacePolicy("a", Strategy.MERGE, Strategy.MANUAL),)
    assert s.memory.schedules[0].name == "n"
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={},
            overrides={
                "memory.policies": [
                    {"prefix": "a", "strategy": "newest"},
                    {"prefix": "b", "tie_break": "merge"},
                    {"prefix": "c", "priority": ["elsewhere"]},
                ],
                "memory.schedules": [{"name": "n", "cron": "* * * * *", "strategy": "x"}],
            },
        )
    text = "\n".join(err.value.problems)
    assert "entry 0: unknown strategy 'newest'" in text
    assert "entry 1: tie_break 'merge' picks no winner" in text
    assert "entry 2: priority names unknown stores" in text
    assert "memory.schedules (env DATAMCP_MEMORY_SCHEDULES): entry 0: unknown strategy" in text


def test_connections_and_apis_are_checked_alike_in_both_sections() -> None:
    bad = {"a": {"base_url": "ftp://x"}}
    with pytest.raises(ConfigError) as err:
        load_settings(
            environ={},
            overrides={
                "agents.sql_connections": {"db": 1},
                "pipelines.sql_connections": {"db": ""},
                "agents.http_apis": bad,
                "pipelines.http_apis": bad,
            },
        )
    text = "\n".join(err.value.problems)
    for section in ("agents", "pipelines"):
        assert f"{section}.sql_connections (env" in text
        assert f"{section}.http_apis (env" in text
    assert text.count("expected a table of name = SQLAlchemy URL") == 2
