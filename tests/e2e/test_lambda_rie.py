"""The built Lambda package inside the real Lambda runtime emulator.

``make lambda-package`` builds ``.build/lambda`` (manylinux wheels for the
template's python3.12 runtime); the emulator (``aws-lambda-rie`` from the
aws-sam-cli wheel) runs it with a Python 3.12 that sees nothing but the
package and the runtime interface client (``tests/lambda_rie.py``), as
``/var/task`` does in Lambda. The migration function migrates (by hand and
as the stack's custom resource), then the tasks function, configured as the
template configures it (``database_migrate = verify``), runs SQS batches.

Skipped when the emulator or a Python 3.12 cannot be had on this machine,
except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.uow import SqlUnitOfWork
from datamcp.core.agents.model import Task, TaskState, task_id_for
from tests import lambda_rie
from tests.agent_plugins import PLUGINS
from tests.integration.test_handlers_migrate import CloudFormation
from tests.lambda_events import sqs_event, sqs_record, task_body

ROOT = Path(__file__).resolve().parents[2]
#: Imported by nothing the handlers reach (left out of the package).
SERVER_ONLY = ("grpc", "google", "rich")  # grpcio*, protobuf, googleapis-common-protos, CLI
#: The batch pipeline engine, left out too: only these modules import it.
ENGINE = ("duckdb", "pyarrow", "adbc_driver")
ENGINE_MODULES = {
    "datamcp.core.pipelines.engine",
    "datamcp.core.pipelines.exprc",
    "datamcp.core.pipelines.exprcompile",
    "datamcp.core.pipelines.exprfn",
    "datamcp.core.pipelines.incremental",
    "datamcp.core.pipelines.plan",
    "datamcp.core.pipelines.scan",
    "datamcp.adapters.pipelines.sqlite_table",
}

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import datamcp, handlers
failed = {}
for package in (datamcp, handlers):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            failed[info.name] = exc.name
print(json.dumps({"failed": failed, "python": list(sys.version_info[:2]),
                  "path": [p for p in sys.path if "site-packages" in p]}))
"""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Lambda package under the emulator: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def package() -> Path:
    try:
        lambda_rie.runtime()
        lambda_rie.emulator()
    except lambda_rie.Unavailable as exc:
        _unavailable(str(exc))
    return lambda_rie.build_package()


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """The tests' plugin agents, beside the package (as a layer would add them)."""
    where = tmp_path / "plugins" / "tests"
    where.mkdir(parents=True)
    (where / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "agent_plugins.py", where / "agent_plugins.py")
    return where.parent


def container_env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "DATAMCP_DATABASE_URL": database_url,
        "DATAMCP_DATA_DIR": str(tmp_path / "data"),
        "DATAMCP_AGENTS_PLUGINS": json.dumps(PLUGINS),
        "DATAMCP_DATABASE_MIGRATE": "verify",  # as the template sets it
        "DATAMCP_LOGGING_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture
def migrated(package: Path, database_url: str, tmp_path: Path) -> str:
    """The database after the migration function ran (by hand) in the emulator."""
    env = container_env(database_url, tmp_path)
    with lambda_rie.emulated("handlers.migrate.handler", env, tmp_path / "migrate.log") as fn:
        done = fn.invoke({})["migrated"]
    assert done[0].startswith("database upgraded from empty to "), done
    return database_url


@pytest.fixture
def tasks_function(migrated: str, plugins: Path, tmp_path: Path) -> Iterator[lambda_rie.Function]:
    env = container_env(migrated, tmp_path)
    log = tmp_path / "tasks.log"
    with lambda_rie.emulated("handlers.tasks.handler", env, log, extra_paths=(plugins,)) as fn:
        yield fn


def stored(database_url: str, request_id: str, tenant: str = "default") -> Task | None:
    import asyncio

    async def get() -> Task | None:
        engine = create_engine(database_url)
        try:
            async with SqlUnitOfWork(engine) as tx:
                task: Task | None = await tx.tasks.get(tenant, task_id_for(tenant, request_id))
                return task
        finally:
            await engine.dispose()

    return asyncio.run(get())


def test_every_module_imports_under_the_runtime_python_from_the_package(package: Path) -> None:
    version, python = lambda_rie.runtime()
    proc = subprocess.run(
        [python, "-S", "-c", IMPORT_ALL],
        cwd=package,
        env={"PYTHONPATH": str(package), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["python"] == [int(p) for p in version.split(".")]
    assert report["path"] == []  # nothing but the package
    for module, missing in report["failed"].items():
        # Only the gRPC server side and the engine may miss what the package
        # leaves out (the spec side of every pipeline kind imports).
        if module in ENGINE_MODULES:
            assert missing.startswith(ENGINE), (module, missing)
            continue
        assert missing.startswith(SERVER_ONLY), (module, missing)
        assert module.startswith(("datamcp.entrypoints", "datamcp.v1")), module
    assert not any(m.startswith("handlers") for m in report["failed"])


def test_a_batch_with_one_bad_record_reports_exactly_that_record(
    tasks_function: lambda_rie.Function, migrated: str
) -> None:
    good = [sqs_record(task_body("echo", {"n": i}, request_id=f"rie-{i}")) for i in range(3)]
    bad = sqs_record(task_body("math.add", {"a": "x"}, request_id="rie-bad"))
    answer = tasks_function.invoke(sqs_event([good[0], good[1], bad, good[2]]))
    assert answer == {"batchItemFailures": [{"itemIdentifier": bad["messageId"]}]}
    for i in range(3):
        task = stored(migrated, f"rie-{i}")
        assert task is not None and task.state is TaskState.SUCCEEDED and task.result == {"n": i}
    assert stored(migrated, "rie-bad") is None
    # What Lambda would ship to CloudWatch: JSON lines naming the invocation, EMF.
    lines = tasks_function.lines()
    (failed,) = [line for line in lines if line.get("message") == "record failed"]
    assert failed["function_name"] == "datamcp-tasks" and failed["cold_start"] is True
    assert failed["function_request_id"] and failed["message_id"] == bad["messageId"]
    (emf,) = [line for line in lines if "RecordsProcessed" in line]
    assert (emf["RecordsProcessed"], emf["RecordsFailed"]) == ([3.0], [1.0])


def test_a_duplicate_delivery_has_no_second_effect(
    tasks_function: lambda_rie.Function, migrated: str, tmp_path: Path
) -> None:
    marker = tmp_path / "effects.txt"
    body = task_body("test.slow", {"seconds": 0.1, "marker": str(marker)})
    record = sqs_record(body, message_id="rie-dup")
    assert tasks_function.invoke(sqs_event([record])) == {"batchItemFailures": []}
    redelivered = sqs_record(body, message_id="rie-dup", receive_count=2)
    assert tasks_function.invoke(sqs_event([redelivered])) == {"batchItemFailures": []}
    assert len(marker.read_text().splitlines()) == 1
    task = stored(migrated, "sqs:rie-dup")
    assert task is not None and task.state is TaskState.SUCCEEDED and task.attempts == 1
    # A run in another process (the emulator's runtime), not in this one.
    assert marker.read_text().split()[2] != str(os.getpid())


def test_the_stack_s_migration_resource_answers_cloudformation(
    package: Path, database_url: str, tmp_path: Path
) -> None:
    cloudformation = CloudFormation()
    try:
        env = container_env(database_url, tmp_path)
        with lambda_rie.emulated("handlers.migrate.handler", env, tmp_path / "m.log") as fn:
            fn.invoke(cloudformation.request("Create"))
            fn.invoke(
                cloudformation.request("Delete", PhysicalResourceId="datamcp-database-schema")
            )
    finally:
        cloudformation.server.shutdown()
    (_, created), (_, deleted) = cloudformation.answers
    assert created["Status"] == "SUCCESS" and created["Reason"].startswith("database upgraded")
    assert deleted["Status"] == "SUCCESS"
