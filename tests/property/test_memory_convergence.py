"""Property: random interleavings of writes and deletes on three stores, with
syncs between random pairs in random order, then one sync of all stores.

- Every automatic strategy converges: all stores end with identical records,
  and a second sync changes nothing.
- No write is lost unless the strategy's rule supersedes it: the surviving
  content is the strategy's pick among the writes no other write includes
  (for merge: every field changed by only one of them survives).
- Under manual, every pair of concurrent surviving writes is in the queue.

Stores are the in-memory fakes of the store port (the SQL adapters are
covered by the integration tests); the HLC runs on a fake wall clock that
often stands still, so equal timestamps and the store-id tie-break occur.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datamcp.core.memory.clock import dominates
from datamcp.core.memory.model import ConflictStatus, Record, Strategy, SyncRequest
from datamcp.core.memory.service import MemoryService
from datamcp.core.memory.sync import SyncEngine
from tests.unit.memory_fakes import FakeLedger, FakeStore

STORES = ("a", "b", "c")
PRIORITY = ("b", "c", "a")
KEYS = ("k0", "k1", "k2")
FIELDS = ("f0", "f1", "f2")

write = st.tuples(
    st.just("write"),
    st.sampled_from(STORES),
    st.sampled_from(KEYS),
    st.dictionaries(st.sampled_from(FIELDS), st.integers(0, 3), max_size=3),
)
delete = st.tuples(st.just("delete"), st.sampled_from(STORES), st.sampled_from(KEYS), st.none())
sync_pair = st.tuples(
    st.just("sync"),
    st.sampled_from(STORES),
    st.sampled_from(STORES),
    st.none(),
)
tick = st.tuples(st.just("tick"), st.integers(0, 2), st.none(), st.none())
programs = st.lists(st.one_of(write, write, delete, sync_pair, tick), min_size=1, max_size=30)


class Wall:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def play(
    program: list[tuple[Any, ...]], strategy: Strategy
) -> tuple[dict[str, FakeStore], list[Record], FakeLedger, int]:
    wall = Wall()
    stores = {s: FakeStore(s, primary=s == "a") for s in STORES}
    service = MemoryService(list(stores.values()), clock=wall, history_depth=2)
    ledger = FakeLedger()
    engine = SyncEngine(service, ledger, clock=wall)
    await service.start()
    writes: list[Record] = []

    def request(*names: str) -> SyncRequest:
        return SyncRequest(stores=names, strategy=strategy, priority=PRIORITY)

    try:
        for kind, x, y, value in program:
            if kind == "tick":
                wall.now += x / 1000
            elif kind == "sync":
                if x != y:
                    run = await engine.synchronize("t", request(x, y))
                    assert run.status.name == "SUCCEEDED", run.error
            else:
                current = await stores[x].get("t", "ns", y)
                if kind == "delete" and (current is None or current.deleted):
                    continue
                op = service.op("ns", y, value, delete=kind == "delete")
                writes.append(await service.put("t", op, x))
        final = await engine.synchronize("t", request(*STORES))
        assert final.status.name == "SUCCEEDED", final.error
        again = await engine.synchronize("t", request(*STORES))
        return stores, writes, ledger, again.records_synced
    finally:
        await service.stop()


def surviving(writes: list[Record], key: str) -> list[Record]:
    """Writes of ``key`` that no other write includes (the concurrent frontier)."""
    mine = [w for w in writes if w.key == key]
    return [w for w in mine if not any(o is not w and o.vv.get(w.origin, 0) >= w.hlc for o in mine)]


def expected_winner(frontier: list[Record], strategy: Strategy) -> Record:
    if strategy == Strategy.SOURCE_PRIORITY:
        return min(frontier, key=lambda w: (PRIORITY.index(w.origin), -w.hlc, w.origin))
    return max(frontier, key=lambda w: (w.hlc, w.origin))


def check_converged(stores: dict[str, FakeStore], resynced: int) -> None:
    assert resynced == 0
    contents = [
        {k: (r.value_json, r.deleted, r.vv) for k, r in s.records.items()} for s in stores.values()
    ]
    assert contents[0] == contents[1] == contents[2]


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("strategy", [Strategy.TIMESTAMP_WINS, Strategy.SOURCE_PRIORITY])
@SETTINGS
@given(program=programs)
def test_winner_strategies_converge_and_keep_the_rule_winner(
    strategy: Strategy, program: list[tuple[Any, ...]]
) -> None:
    stores, writes, _, resynced = asyncio.run(play(program, strategy))
    check_converged(stores, resynced)
    for key in KEYS:
        frontier = surviving(writes, key)
        final = stores["a"].records.get(("t", "ns", key))
        if not frontier:
            assert final is None
            continue
        assert final is not None
        winner = expected_winner(frontier, strategy)
        assert (final.value_json, final.deleted) == (winner.value_json, winner.deleted)
        assert all(dominates(final.vv, w.vv) for w in frontier)


@SETTINGS
@given(program=programs)
def test_merge_converges_and_keeps_every_field_changed_on_one_side(
    program: list[tuple[Any, ...]],
) -> None:
    stores, writes, _, resynced = asyncio.run(play(program, Strategy.MERGE))
    check_converged(stores, resynced)
    for key in KEYS:
        frontier = surviving(writes, key)
        final = stores["a"].records.get(("t", "ns", key))
        if not frontier:
            continue
        assert final is not None
        if len(frontier) == 1:
            assert (final.value_json, final.deleted) == (
                frontier[0].value_json,
                frontier[0].deleted,
            )
            continue
        if any(w.deleted for w in frontier) or final.deleted:
            continue
        merged = json.loads(final.value_json or "null")
        for field in FIELDS:
            changes = {}
            for w in frontier:
                base = json.loads(w.base_json) if w.base_json else {}
                value = json.loads(w.value_json or "null")
                if not isinstance(base, dict):
                    base = {}
                if base.get(field, "missing") != value.get(field, "missing"):
                    changes[w.origin] = value.get(field, "missing")
            if len(set(changes.values())) == 1:
                assert merged.get(field, "missing") == next(iter(changes.values()))


@SETTINGS
@given(program=programs)
def test_manual_queues_every_concurrent_pair(program: list[tuple[Any, ...]]) -> None:
    stores, writes, ledger, _ = asyncio.run(play(program, Strategy.MANUAL))
    queued = [
        {str(v.version) for v in c.versions}
        for c in ledger.conflicts.values()
        if c.status == ConflictStatus.PENDING
    ]
    for key in KEYS:
        frontier = surviving(writes, key)
        for w1, w2 in itertools.combinations(frontier, 2):
            pair = {str(w1.version), str(w2.version)}
            assert any(pair <= q for q in queued), (key, pair, queued)
        # Nothing was settled for the caller: each survivor is still on its store.
        for w in frontier:
            held = stores[w.origin].records[("t", "ns", key)]
            assert held.version == w.version
