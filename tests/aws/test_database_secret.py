"""The database URL from Secrets Manager or SSM (``database_url_secret``),
against a moto server: the app connects with what the secret holds, a
missing or unusable secret is a clear error that shows no URL, and the value
never has to be a plain environment variable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aioboto3
import pytest
from sqlalchemy.engine import make_url

from datamcp.adapters.aws.secrets import url_from_secret
from datamcp.bootstrap import App, migrate_database
from datamcp.core.agents.model import TaskSpec, TaskState
from datamcp.core.errors import ConfigError, Unavailable
from tests.aws.conftest import REGION
from tests.support import make_settings


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # botocore's standard endpoint setting: how a deployment would point at a VPC endpoint.
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


async def secret(value: str, name: str = "datamcp/db") -> str:
    async with aioboto3.Session().client("secretsmanager", region_name=REGION) as sm:
        created: dict[str, Any] = await sm.create_secret(Name=name, SecretString=value)
        return str(created["ARN"])


async def parameter(value: str, name: str = "/datamcp/database-url") -> str:
    async with aioboto3.Session().client("ssm", region_name=REGION) as ssm:
        await ssm.put_parameter(Name=name, Value=value, Type="SecureString")
        found = await ssm.get_parameter(Name=name)
        return str(found["Parameter"]["ARN"])


async def run_a_task(settings: Any) -> str:
    app = await App.create(settings)
    try:
        await app.events.bus.start()
        task = await app.agents.execute("default", TaskSpec("echo", input={"n": 1}))
        assert task.state is TaskState.SUCCEEDED
        return app.engine.url.render_as_string(hide_password=False)
    finally:
        await app.close()


@pytest.mark.parametrize("store", ["secretsmanager", "ssm"])
async def test_the_app_connects_with_the_url_the_secret_holds(
    aws: str, database_url: str, tmp_path: Path, store: str
) -> None:
    arn = await (secret(database_url) if store == "secretsmanager" else parameter(database_url))
    # The plain database_url points elsewhere: the secret wins.
    settings = make_settings(
        tmp_path / "unused", f"sqlite:///{tmp_path / 'not-this.db'}", database_url_secret=arn
    )
    await migrate_database(settings)
    used = await run_a_task(settings)
    assert make_url(used).database == make_url(database_url).database
    assert not (tmp_path / "not-this.db").exists()


@pytest.mark.pg
async def test_an_rds_style_json_secret_becomes_a_postgresql_url(
    aws: str, pg_database: str, tmp_path: Path
) -> None:
    url = make_url(pg_database)
    value = {
        "engine": "postgres",
        "username": url.username,
        "password": url.password or "",
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
    }
    settings = make_settings(tmp_path, None, database_url_secret=await secret(json.dumps(value)))
    await migrate_database(settings)
    used = make_url(await run_a_task(settings))
    assert (used.host, used.port, used.database) == (url.host, url.port, url.database)


async def test_a_missing_secret_is_unavailable_and_names_no_url(aws: str, tmp_path: Path) -> None:
    arn = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-AbCdEf"
    settings = make_settings(tmp_path, None, database_url_secret=arn)
    with pytest.raises(Unavailable) as caught:
        await App.create(settings)
    assert caught.value.reason == "SECRET_UNAVAILABLE"
    assert "ResourceNotFoundException" in caught.value.message
    assert "sqlite" not in caught.value.message


async def test_a_secret_without_a_database_url_is_a_config_error(aws: str, tmp_path: Path) -> None:
    arn = await secret(json.dumps({"username": "u", "password": "hunter2"}))  # no host
    with pytest.raises(ConfigError) as caught:
        await App.create(make_settings(tmp_path, None, database_url_secret=arn))
    assert "hunter2" not in caught.value.message
    arn = await secret(json.dumps({"url": "mysql://u:p@h/d"}), name="other")
    with pytest.raises(ConfigError, match="not sqlite"):
        await App.create(make_settings(tmp_path, None, database_url_secret=arn))


def test_secret_shapes() -> None:
    assert url_from_secret("postgresql://a:b@h/d") == "postgresql://a:b@h/d"
    assert url_from_secret(json.dumps({"url": "sqlite:///x.db"})) == "sqlite:///x.db"
    odd = {"username": "a@b", "password": "p:/@w", "host": "db.internal", "port": "6432"}
    url = make_url(url_from_secret(json.dumps(odd)))
    assert (url.username, url.password, url.host, url.port) == ("a@b", "p:/@w", "db.internal", 6432)
    for bad in ("", "not json", "[]", json.dumps({"username": "u"})):
        with pytest.raises(ConfigError):
            url_from_secret(bad)
