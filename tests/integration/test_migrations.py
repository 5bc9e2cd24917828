"""Schema changes never race: processes starting together on an empty
database all succeed (the schema lock), ``verify`` processes need no DDL
rights, and a database migrated by a newer release is left alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.bootstrap import App, migrate_database
from datamcp.core.agents.model import TaskSpec, TaskState
from datamcp.core.errors import Unavailable
from tests.support import make_settings

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4

#: One process of a deployment starting: a Lambda cold start or a server
#: (App.create, database_migrate = auto), or the migration step.
STARTER = """
import asyncio, json, sys, time
from datamcp.bootstrap import App, migrate_database
from datamcp.config.settings import load_settings
from datamcp.core.agents.model import TaskSpec

mode, url, data_dir, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
settings = load_settings(overrides={"database_url": url, "data_dir": data_dir}, environ={})

async def main() -> str:
    time.sleep(max(0.0, start_at - time.time()))  # everything imported: start together
    if mode == "migrate":
        return " / ".join(await migrate_database(settings))
    app = await App.create(settings)
    try:
        await app.events.bus.start()  # as a Lambda container does
        task = await app.agents.execute("default", TaskSpec("echo", input=1))
        return f"{app.instance.id} {task.state.name}"
    finally:
        await app.close()

print(json.dumps(asyncio.run(main())))
"""


def start_together(url: str, data_dir: Path, modes: list[str]) -> list[str]:
    start_at = time.time() + 4.0  # after every interpreter has imported the app
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, mode, url, str(data_dir), str(start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


async def revision_and_tables(url: str) -> tuple[str | None, set[str]]:
    engine = create_engine(url)
    try:
        revision = await migrate.current_revision(engine)
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        return revision, tables
    finally:
        await engine.dispose()


def head() -> str:
    from alembic.script import ScriptDirectory

    found = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert found is not None
    return found


def test_verify_reads_the_revisions_alembic_does() -> None:
    """verify reads the scripts without Alembic (a cold start's ~150 ms)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config())
    found_head, known = migrate.script_revisions()
    assert found_head == head()
    assert known == {r.revision for r in script.walk_revisions()}


async def test_processes_starting_together_on_an_empty_database_all_succeed(
    database_url: str, tmp_path: Path
) -> None:
    modes = ["app"] * (PROCESSES - 1) + ["migrate"]
    outputs = await asyncio.to_thread(start_together, database_url, tmp_path, modes)
    apps = [o.split() for o in outputs[:-1]]
    assert all(state == "SUCCEEDED" for _, state in apps)
    assert len({instance for instance, _ in apps}) == PROCESSES - 1
    revision, tables = await revision_and_tables(database_url)
    assert revision == head()
    assert {"alembic_version", "tasks", "events", "memory_records", "memory_meta"} <= tables
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            owners = (
                await conn.execute(text("SELECT label FROM memory_meta WHERE name = 'store'"))
            ).all()
            registered = (await conn.execute(text("SELECT count(*) FROM instances"))).scalar()
    finally:
        await engine.dispose()
    assert owners == [("primary",)]  # the store was claimed once
    assert registered == PROCESSES - 1


async def test_the_schema_lock_is_exclusive_and_a_waiter_gives_up_clearly(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        async with migrate.locked(engine):
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                async with migrate.locked(engine, wait=0.5):
                    pass
            assert time.monotonic() - started >= 0.5
            assert caught.value.reason == "SCHEMA_LOCKED"
        async with migrate.locked(engine, wait=0.5):  # released with the transaction
            pass
        outcome = await migrate.upgrade(engine)
        assert (outcome.status, outcome.before, outcome.after) == ("upgraded", None, head())
        assert (await migrate.upgrade(engine)).status == "current"
    finally:
        await engine.dispose()


async def test_verify_refuses_an_unmigrated_database_and_accepts_a_newer_one(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, database_url, database_migrate="verify")
    with pytest.raises(Unavailable) as caught:
        await App.create(settings)
    assert "SCHEMA_NOT_CURRENT" not in caught.value.message  # the reason is not the text
    assert "run the migrations first" in caught.value.message
    _, tables = await revision_and_tables(database_url)
    assert "tasks" not in tables  # verify changed nothing
    await migrate_database(settings)
    app = await App.create(settings)
    await app.close()
    # A newer release migrated the database: an older one (a rollback) starts
    # on it and its migration step leaves it alone.
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
        outcome = await migrate.upgrade(engine)
        assert (outcome.status, outcome.before) == ("ahead", "f00dcafe")
        assert (await migrate.verify(engine)).status == "ahead"
    finally:
        await engine.dispose()
    app = await App.create(settings)
    await app.close()


@pytest.fixture
async def dml_only_url(pg_database: str) -> AsyncIterator[tuple[str, str]]:
    """(owner URL, URL of a role that may read and write rows but change no schema)."""
    owner = make_url(pg_database)
    role = f"datamcp_app_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(owner.render_as_string(hide_password=False))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
    finally:
        await admin.close()
    try:
        yield (
            owner.render_as_string(hide_password=False),
            owner.set(username=role).render_as_string(hide_password=False),
        )
    finally:
        admin = await asyncpg.connect(owner.render_as_string(hide_password=False))
        try:
            await admin.execute(f"DROP OWNED BY {role}")
            await admin.execute(f"DROP ROLE {role}")
        finally:
            await admin.close()


@pytest.mark.pg
async def test_a_database_user_without_ddl_rights_runs_the_app_after_the_migration_step(
    dml_only_url: tuple[str, str], tmp_path: Path
) -> None:
    owner_url, app_url = dml_only_url
    await migrate_database(make_settings(tmp_path, owner_url))
    conn = await asyncpg.connect(owner_url)
    try:
        role = make_url(app_url).username
        await conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"
        )
        await conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    finally:
        await conn.close()
    settings = make_settings(tmp_path, app_url, database_migrate="verify")
    app = await App.create(settings)
    try:
        await app.start()  # everything a server runs, as that user
        task = await app.agents.execute("default", TaskSpec("echo", input={"n": 1}))
        assert task.state is TaskState.SUCCEEDED
        await app.memory.service.put("default", app.memory.service.op("ns", "k", {"v": 1}))
    finally:
        await app.close()
    # The same user may not migrate: the migration step needs the owner.
    with pytest.raises(Exception, match=r"permission denied|must be owner"):
        engine = create_engine(app_url)
        try:
            async with engine.begin() as c:
                await c.execute(text("CREATE TABLE nope (id int)"))
        finally:
            await engine.dispose()
