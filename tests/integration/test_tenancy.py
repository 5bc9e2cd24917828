"""The tenant matrix: tenant acme owns one of every resource kind (made
through the API, tests/tenancy/acme.py); tenant globex then calls every RPC
that reads, lists, watches, changes or deletes one (by id, by name, by
filter, with acme's page tokens, with acme's subscription names, request ids
and versions). globex must get NOT_FOUND or only its own data (no answer
carries anything of acme's) and acme's resources must be unchanged after
each call. Names both tenants use (subscription, pipeline, stream job,
memory key, request ids) resolve to each tenant's own.

One row per (RPC, way of reaching acme's data), in tests/tenancy/*_rows.py.
``test_every_rpc_is_in_the_matrix`` fails when a datamcp.v1 RPC has no row
and is not listed as tenant-free, so a new RPC cannot skip the matrix. Runs
on SQLite and PostgreSQL (one server and one world per backend, shared by
the rows).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import datamcp.v1
from tests.tenancy.acme import built_world, database
from tests.tenancy.agent_rows import AGENT_ROWS
from tests.tenancy.event_rows import EVENT_ROWS
from tests.tenancy.memory_rows import MEMORY_ROWS
from tests.tenancy.pipeline_rows import PIPELINE_ROWS
from tests.tenancy.probes import Row
from tests.tenancy.snapshot import snapshot
from tests.tenancy.world import World

#: RPCs that hold no tenant's data: process health and process-wide metrics
#: (operator-only), answered alike to every caller.
TENANT_FREE = {
    "HealthService/GetHealthReport": "process health, the same for every caller",
    "HealthService/WatchHealth": "process health, the same for every caller",
    "HealthService/GetMetrics": "process-wide counters (and agent ids), operators only",
}

KINDS = (
    "tasks",
    "audit records",
    "agents",
    "events",
    "subscriptions",
    "dead letters",
    "pipelines",
    "runs",
    "rejects",
    "stream jobs",
    "memory records",
    "sync runs",
    "conflicts",
)

ROWS = sorted([*AGENT_ROWS, *EVENT_ROWS, *MEMORY_ROWS, *PIPELINE_ROWS], key=lambda r: bool(r.xfail))


# --- the tests -------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(backend: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp: Path = tmp_path_factory.mktemp(f"tenancy-{backend}")
    async with database(backend, tmp) as url, built_world(tmp, url) as w:
        yield w


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("row", [r.param() for r in ROWS])
async def test_globex_cannot_reach_acme(world: World, row: Row) -> None:
    before = None if row.acme_acts else await snapshot(world)
    answered = await row.probe(world)
    assert not world.leaked(answered), f"acme's data in answers to globex: {world.leaked(answered)}"
    if before is not None:
        after = await snapshot(world)
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert not changed, f"globex changed acme's resources: {changed}"


def _all_rpcs() -> set[str]:
    """Service/Method of every RPC of every datamcp.v1 proto module."""
    found: set[str] = set()
    for info in pkgutil.iter_modules(datamcp.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"datamcp.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found.update(f"{service.name}/{m.name}" for m in service.methods)
    return found


def test_every_rpc_is_in_the_matrix() -> None:
    rpcs = _all_rpcs()
    assert len(rpcs) > 50
    covered = {r.rpc for r in ROWS}
    assert not covered & set(TENANT_FREE)
    missing = rpcs - covered - set(TENANT_FREE)
    assert not missing, f"add a row to the tenant matrix (or to TENANT_FREE) for {sorted(missing)}"
    assert not (covered | set(TENANT_FREE)) - rpcs, "rows for RPCs that no longer exist"


def test_every_resource_kind_is_probed() -> None:
    probed = {kind for r in ROWS for kind in r.kinds}
    assert probed == set(KINDS)
