"""handlers.migrate.handler: the migration step by hand and as the stack's
CloudFormation custom resource (the outcome PUT to its response URL, always;
Delete leaves the schema alone)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine
from handlers import _runtime
from handlers import migrate as migrate_handler


class CloudFormation:
    """A response URL on 127.0.0.1 that records what was PUT to it."""

    def __init__(self) -> None:
        self.answers: list[tuple[dict[str, str], dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.answers.append((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stack-response?sig=x"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def request(self, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            "RequestType": kind,
            "ResponseURL": extra.pop("ResponseURL", self.url),
            "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/datamcp/1",
            "RequestId": str(uuid.uuid4()),
            "ResourceType": "Custom::DatabaseMigrations",
            "LogicalResourceId": "Migrations",
            "ResourceProperties": {"ServiceToken": "arn:...", "CodeVersion": "arn:...:3"},
            **extra,
        }


@pytest.fixture
def cloudformation() -> Iterator[CloudFormation]:
    cf = CloudFormation()
    try:
        yield cf
    finally:
        cf.server.shutdown()


@pytest.fixture
def container(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DATAMCP_DATABASE_URL", database_url)
    monkeypatch.setenv("DATAMCP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATAMCP_LOGGING_LEVEL", "WARNING")
    try:
        yield database_url
    finally:
        _runtime.shutdown()


def revision(url: str) -> str | None:
    async def read() -> str | None:
        engine = create_engine(url)
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    return _runtime.loop().run_until_complete(read())


def test_the_stack_migrates_on_create_and_update_and_hears_back(
    container: str, cloudformation: CloudFormation
) -> None:
    create = cloudformation.request("Create")
    migrate_handler.handler(create, _runtime.LocalContext(60))
    (headers, answer) = cloudformation.answers[-1]
    assert headers.get("Content-Type") == ""  # what the pre-signed URL was signed for
    assert answer["Status"] == "SUCCESS", answer["Reason"]
    assert answer["PhysicalResourceId"] == migrate_handler.PHYSICAL_ID
    assert (answer["RequestId"], answer["LogicalResourceId"]) == (create["RequestId"], "Migrations")
    assert answer["Reason"].startswith("database upgraded from empty to ")
    assert revision(container) is not None
    update = cloudformation.request("Update", PhysicalResourceId=migrate_handler.PHYSICAL_ID)
    migrate_handler.handler(update, _runtime.LocalContext(60))
    assert cloudformation.answers[-1][1]["Reason"].startswith("database at revision")
    delete = cloudformation.request("Delete", PhysicalResourceId=migrate_handler.PHYSICAL_ID)
    migrate_handler.handler(delete, _runtime.LocalContext(60))
    assert cloudformation.answers[-1][1]["Status"] == "SUCCESS"
    assert revision(container) is not None  # the schema outlives the stack


def test_a_failed_migration_is_answered_failed_not_left_hanging(
    container: str, cloudformation: CloudFormation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAMCP_DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    answer = migrate_handler.handler(cloudformation.request("Create"), _runtime.LocalContext(60))
    assert answer["Status"] == "FAILED" and "migrations failed" in answer["Reason"]
    assert cloudformation.answers[-1][1]["Status"] == "FAILED"


def test_by_hand_it_answers_what_it_did(container: str) -> None:
    done = migrate_handler.handler({}, _runtime.LocalContext(60))["migrated"]
    assert done[0].startswith("database upgraded from empty to ")
    assert done[1:] == ["memory store primary: schema ready"]
    again = migrate_handler.handler({}, _runtime.LocalContext(60))["migrated"]
    assert again[0].startswith("database at revision")


def test_an_unreachable_response_url_fails_the_invocation_for_lambda_to_retry(
    container: str, cloudformation: CloudFormation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate_handler, "PUT_ATTEMPTS", 1)
    request = cloudformation.request("Delete", ResponseURL="http://127.0.0.1:9/nothing-listens")
    with pytest.raises(OSError):
        migrate_handler.handler(request, _runtime.LocalContext(60))
