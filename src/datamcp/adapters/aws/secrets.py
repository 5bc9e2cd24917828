"""The database URL from AWS Secrets Manager or SSM Parameter Store.

Read once per process at start (``database_url_secret``), so the URL and its
password are never a plain environment variable. The region is the ARN's.
The secret holds either the URL itself or JSON: ``{"url": ...}``, or the
shape RDS and Secrets Manager's rotation functions use (``username``,
``password``, ``host``, optional ``port`` and ``dbname``). Endpoints follow
botocore's usual configuration (``AWS_ENDPOINT_URL_SECRETS_MANAGER``,
``AWS_ENDPOINT_URL_SSM``), which is how tests point it at moto.
"""

from __future__ import annotations

import json
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.engine import URL

from datamcp.core.errors import ConfigError, Unavailable

#: botocore's standard retry mode: throttling and 5xx are retried a few times.
_CONFIG = AioConfig(connect_timeout=5, read_timeout=10, retries={"mode": "standard"})


async def read_database_url(arn: str) -> str:
    """The database URL the secret or parameter at ``arn`` holds.

    Raises:
        Unavailable: the secret cannot be read (missing, denied, AWS down).
        ConfigError: it holds no usable database URL.
    """
    parts = arn.split(":", 5)
    service, region = parts[2], parts[3]
    try:
        async with aioboto3.Session().client(service, region_name=region, config=_CONFIG) as c:
            if service == "secretsmanager":
                found = await c.get_secret_value(SecretId=arn)
                value = found.get("SecretString")
            else:  # GetParameter takes the ARN as the name
                found = await c.get_parameter(Name=arn, WithDecryption=True)
                value = found["Parameter"]["Value"]
    except (BotoCoreError, ClientError) as exc:
        code = exc.response["Error"]["Code"] if isinstance(exc, ClientError) else type(exc).__name__
        raise Unavailable(
            f"cannot read the database URL from {arn}: {code}", reason="SECRET_UNAVAILABLE"
        ) from exc
    if not isinstance(value, str) or not value.strip():
        raise ConfigError([f"database_url_secret: {arn} holds no text (a binary secret?)"])
    return url_from_secret(value.strip(), arn)


def url_from_secret(value: str, where: str = "the secret") -> str:
    """A database URL from a secret's text (see the module doc for the shapes)."""
    if value.startswith(("postgresql", "postgres:", "sqlite")):
        return value
    try:
        data: Any = json.loads(value)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("url"), str):
        return str(data["url"])
    if isinstance(data, dict) and all(isinstance(data.get(k), str) for k in _NEEDED):
        port = data.get("port")
        url = URL.create(
            "postgresql",
            username=data["username"],
            password=data["password"],
            host=data["host"],
            port=int(port) if port not in (None, "") else None,
            database=str(data.get("dbname") or data.get("database") or "") or None,
        )
        return url.render_as_string(hide_password=False)
    raise ConfigError(
        [
            f"database_url_secret: {where} holds neither a database URL nor JSON with "
            "url, or username, password and host"
        ]
    )


_NEEDED = ("username", "password", "host")
