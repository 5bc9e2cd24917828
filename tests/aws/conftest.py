"""A moto server on 127.0.0.1 for the AWS adapter tests.

aiobotocore cannot use moto's in-process mock, so moto runs as a real HTTP
server in a thread: one per test session, its state reset before each test.
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aioboto3
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_endpoint(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """The server's URL, with fresh state and dummy credentials from the environment
    (no profile, config file or instance metadata can be consulted)."""
    urllib.request.urlopen(  # reset is POST with an empty body
        urllib.request.Request(f"{moto_server}/moto-api/reset", data=b"", method="POST"),
        timeout=5,
    ).close()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture
async def sqs(moto_endpoint: str) -> AsyncIterator[Any]:
    """A plain SQS client for setting up queues and reading what arrived."""
    async with aioboto3.Session().client(
        "sqs", region_name=REGION, endpoint_url=moto_endpoint
    ) as client:
        yield client


@pytest.fixture
async def events(moto_endpoint: str) -> AsyncIterator[Any]:
    async with aioboto3.Session().client(
        "events", region_name=REGION, endpoint_url=moto_endpoint
    ) as client:
        yield client
