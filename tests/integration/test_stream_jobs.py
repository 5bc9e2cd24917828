"""Stream jobs through the real server: windows over pushed records and bus
events, lateness, bad records, sinks, tenancy, deletion and restarts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from datamcp.adapters.sqlalchemy import migrate
from datamcp.adapters.sqlalchemy.engine import create_engine
from datamcp.adapters.sqlalchemy.stream_repository import result_table
from datamcp.core.events.model import EventFilter
from datamcp.v1 import events_pb2, health_pb2, health_pb2_grpc
from datamcp.v1 import streams_pb2 as pb
from tests.events_client import cloud_event
from tests.streams_client import (
    Streams,
    aggs,
    brief,
    job_spec,
    stream_server,
    value,
)
from tests.support import (
    RunningServer,
    auth_overrides,
    bearer,
    hs256_token,
    make_settings,
    rich_details,
)

OVERRIDES: dict[str, Any] = {
    "rate_limit.enabled": False,
    "streams.poll_interval": 0.05,
    "streams.lease": 3.0,
}


@pytest.fixture
async def server(tmp_path: Path, database_url: str) -> AsyncIterator[RunningServer]:
    async with stream_server(make_settings(tmp_path, database_url, **OVERRIDES)) as s:
        yield s


@pytest.fixture
def streams(server: RunningServer) -> Streams:
    return Streams(server.channel())


async def test_tumbling_push_job_emits_exact_results_to_events_and_a_table(
    server: RunningServer, streams: Streams
) -> None:
    job = await streams.create(
        job_spec(size=10, delay=1, lateness=2, table="sensor_minutes"), name="temps"
    )
    assert job.id and job.state == pb.STREAM_JOB_STATE_RUNNING
    response = await streams.push(
        job.id,
        [
            [{"k": "a", "t": 1, "v": 1}, {"k": "b", "t": 2, "v": 10}, {"k": "a", "t": 9, "v": 3}],
            [{"k": "a", "t": 12, "v": 5}],  # watermark 11: [0,10) waits for 12
            [{"k": "a", "t": 4, "v": 2}],  # out of order, within lateness: counted
            [{"k": "b", "t": 13, "v": 1}],  # watermark 12: [0,10) closes
            [{"k": "a", "t": 8, "v": 100}],  # beyond lateness: late
            [{"k": "z", "t": 40, "v": 0}],  # closes [10,20)
        ],
    )
    assert (response.accepted, response.rejected) == (8, 0)
    done = await streams.wait(job.id, windows_emitted=4)
    c = done.counters
    assert (c.records_accepted, c.records_late, c.records_rejected) == (7, 1, 0)
    assert (c.windows_emitted, c.windows_open) == (4, 1)
    assert done.watermark.ToNanoseconds() == 39 * 10**9
    results = await streams.results(job.id)
    assert brief(results) == [
        ({"k": "a"}, 0, 10, aggs(3, 6, 1, 3)),
        ({"k": "b"}, 0, 10, aggs(1, 10, 10, 10)),
        ({"k": "a"}, 10, 20, aggs(1, 5, 5, 5)),
        ({"k": "b"}, 10, 20, aggs(1, 1, 1, 1)),
    ]
    assert {r["job_name"] for r in results} == {"temps"}
    async with server.server.app.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT key, window_start, record_count, aggregates, tenant, job_id "
                    "FROM sensor_minutes ORDER BY window_start, key"
                )
            )
        ).all()
    assert [(r.key, r.window_start, r.record_count) for r in rows] == [
        ('["a"]', 0, 3),
        ('["b"]', 0, 1),
        ('["a"]', 10, 1),
        ('["b"]', 10, 1),
    ]
    assert json.loads(rows[0].aggregates) == aggs(3, 6, 1, 3)
    assert {(r.tenant, r.job_id) for r in rows} == {("default", job.id)}


async def test_sliding_windows_over_bus_events_with_filters(streams: Streams) -> None:
    source = pb.StreamEventSource(types=["sensor.*"])
    source.where["site"].string_value = "north"
    job = await streams.create(
        job_spec(kind=pb.STREAM_WINDOW_KIND_SLIDING, size=10, slide=5, events=source)
    )
    events = [
        cloud_event("sensor.reading", data={"site": "north", "k": "a", "t": 3, "v": 1}),
        cloud_event("sensor.reading", data={"site": "south", "k": "a", "t": 4, "v": 50}),
        cloud_event("other.reading", data={"site": "north", "k": "a", "t": 5, "v": 50}),
        cloud_event("sensor.reading", data={"site": "north", "k": "a", "t": 7, "v": 2}),
        cloud_event("sensor.reading", data={"site": "north", "k": "a", "t": 30, "v": 0}),
        cloud_event("sensor.reading", data={"site": "north", "k": "a", "t": "bad"}),
    ]
    await streams.events.PublishBatch(events_pb2.PublishBatchRequest(events=events))
    done = await streams.wait(job.id, windows_emitted=3, records_rejected=1)
    assert done.counters.records_accepted == 3
    assert brief(await streams.results(job.id)) == [
        ({"k": "a"}, -5, 5, aggs(1, 1, 1, 1)),
        ({"k": "a"}, 0, 10, aggs(2, 3, 1, 2)),
        ({"k": "a"}, 5, 15, aggs(1, 2, 2, 2)),
    ]


async def test_session_windows_and_late_records_published(streams: Streams) -> None:
    job = await streams.create(
        job_spec(kind=pb.STREAM_WINDOW_KIND_SESSION, gap=5, delay=10, late_events=True)
    )
    await streams.push(
        job.id,
        [
            [{"k": "a", "t": 0, "v": 1}, {"k": "a", "t": 8, "v": 2}, {"k": "a", "t": 4, "v": 3}],
            [{"k": "b", "t": 6, "v": 9}],
            [{"k": "a", "t": 30, "v": 4}],  # watermark 20 closes b[6,11) and a[0,13)
            [{"k": "b", "t": 1, "v": 7}],  # its session would end at 6 <= 20: late
        ],
    )
    await streams.wait(job.id, windows_emitted=2, records_late=1)
    assert brief(await streams.results(job.id)) == [
        ({"k": "b"}, 6, 11, aggs(1, 9, 9, 9)),
        ({"k": "a"}, 0, 13, aggs(3, 6, 1, 3)),
    ]
    late = await streams.replay(["stream.record.late"], subject=job.id)
    assert len(late) == 1
    data = value(late[0].data)
    assert data["record"] == {"k": "b", "t": 1, "v": 7} and data["watermark"] == 20


async def test_bad_pushed_records_are_listed_and_good_ones_are_kept(streams: Streams) -> None:
    job = await streams.create(job_spec(size=10))
    response = await streams.push(
        job.id,
        [
            [{"k": "a", "t": 1, "v": 1}, {"k": "a", "v": 2}, {"k": "a", "t": "noon", "v": 3}],
            [{"t": 2, "v": 4}, {"k": "a", "t": 2, "v": "four"}, {"k": "a", "t": 3, "v": 5}],
            [{"k": "a", "t": 50, "v": 0}],
        ],
    )
    assert (response.accepted, response.rejected) == (3, 4)
    assert [(r.index, r.field) for r in response.rejections] == [
        (1, "records[1].t"),
        (2, "records[2].t"),
        (3, "records[3].k"),
        (4, "records[4].v"),
    ]
    assert "number" in response.rejections[3].description
    done = await streams.wait(job.id, windows_emitted=1, records_rejected=4)
    assert done.counters.records_accepted == 3
    assert brief(await streams.results(job.id)) == [({"k": "a"}, 0, 10, aggs(2, 6, 1, 5))]


async def test_resent_push_messages_count_once(streams: Streams) -> None:
    job = await streams.create(job_spec(size=10))
    batch = [{"k": "a", "t": 1, "v": 1}, {"k": "a", "t": 2, "v": 2}]
    await streams.push(job.id, [batch], request_ids=["m-1"])
    await streams.push(job.id, [batch], request_ids=["m-1"])  # a retry after a lost answer
    await streams.push(job.id, [[{"k": "a", "t": 20, "v": 0}]], request_ids=["m-2"])
    await streams.wait(job.id, windows_emitted=1)
    assert brief(await streams.results(job.id)) == [({"k": "a"}, 0, 10, aggs(2, 3, 1, 2))]


async def test_concurrent_pushers_lose_and_duplicate_nothing(streams: Streams) -> None:
    job = await streams.create(job_spec(size=100, key_fields=()))

    async def pusher(n: int) -> None:
        batches = [[{"t": 1, "v": n * 1000 + i * 10 + j} for j in range(10)] for i in range(10)]
        await streams.push(job.id, batches)

    await asyncio.gather(*(pusher(n) for n in range(5)))
    await streams.push(job.id, [[{"t": 500, "v": 0}]])
    await streams.wait(job.id, windows_emitted=1)
    [result] = await streams.results(job.id)
    values = [n * 1000 + i * 10 + j for n in range(5) for i in range(10) for j in range(10)]
    assert result["aggregates"] == aggs(500, sum(values), min(values), max(values))
    assert result["key"] == {}


async def test_push_protocol_errors(streams: Streams) -> None:
    bus_job = await streams.create(job_spec(size=1, events=pb.StreamEventSource(types=["x.y"])))
    cases = [
        ("nope", grpc.StatusCode.NOT_FOUND),
        (bus_job.id, grpc.StatusCode.FAILED_PRECONDITION),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for job_id, code in cases:
        with pytest.raises(grpc.RpcError) as info:
            await streams.push(job_id, [[{"k": "a", "t": 1, "v": 1}]])
        assert info.value.code() == code, job_id
    push_job = await streams.create(job_spec(size=1))

    async def switching() -> AsyncIterator[pb.PushRecordsRequest]:
        yield pb.PushRecordsRequest(job_id=push_job.id)
        yield pb.PushRecordsRequest(job_id=bus_job.id)

    with pytest.raises(grpc.RpcError) as info:
        await streams.stub.PushRecords(switching())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = rich_details(info.value)["BadRequest"].field_violations
    assert [v.field for v in violations] == ["job_id"]


async def test_invalid_specs_are_refused_with_field_violations(streams: Streams) -> None:
    bad = job_spec(kind=pb.STREAM_WINDOW_KIND_SLIDING, size=5, slide=10, table="Not-A-Table")
    with pytest.raises(grpc.RpcError) as info:
        await streams.create(bad, name="")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = {v.field for v in rich_details(info.value)["BadRequest"].field_violations}
    assert fields == {"job.name", "job.spec.window.slide", "job.spec.sink.table"}
    no_source = pb.StreamJobSpec(window=pb.StreamWindow())
    with pytest.raises(grpc.RpcError) as info:
        await streams.create(no_source)
    fields = {v.field for v in rich_details(info.value)["BadRequest"].field_violations}
    assert fields == {"job.spec.source", "job.spec.window.kind"}
    with pytest.raises(grpc.RpcError) as info:
        await streams.create(job_spec(size=1, table="events"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await streams.stub.ListStreamJobs(pb.ListStreamJobsRequest())
    assert list(listed.jobs) == []


async def test_create_is_idempotent_by_request_id_and_lists_page(streams: Streams) -> None:
    spec = job_spec(size=1)
    made = await asyncio.gather(*(streams.create(spec, request_id="once") for _ in range(4)))
    assert len({j.id for j in made}) == 1
    for i in range(3):
        await streams.create(spec, name=f"j{i}")
    seen: list[str] = []
    token = ""
    while True:
        page = await streams.stub.ListStreamJobs(
            pb.ListStreamJobsRequest(page_size=2, page_token=token)
        )
        seen += [j.name for j in page.jobs]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["job", "j0", "j1", "j2"]


async def test_delete_stops_the_job_and_drops_its_subscription(
    server: RunningServer, streams: Streams
) -> None:
    job = await streams.create(job_spec(size=10))
    await streams.push(job.id, [[{"k": "a", "t": 1, "v": 1}]])
    await streams.wait(job.id, records_accepted=1)
    assert job.id in server.server.app.streams.running
    await streams.stub.DeleteStreamJob(pb.DeleteStreamJobRequest(id=job.id))
    assert job.id not in server.server.app.streams.running
    for call in (
        streams.get(job.id),
        streams.stub.DeleteStreamJob(pb.DeleteStreamJobRequest(id=job.id)),
        streams.push(job.id, [[{"k": "a", "t": 2, "v": 1}]]),
    ):
        with pytest.raises(grpc.RpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    subs = await streams.events.ListSubscriptions(events_pb2.ListSubscriptionsRequest())
    assert f"stream:{job.id}" not in [s.name for s in subs.subscriptions]
    # Nothing more is emitted for it.
    await asyncio.sleep(0.3)
    assert await streams.results(job.id) == []


async def test_restart_resumes_from_the_checkpoint_without_double_counting(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, **OVERRIDES)
    async with stream_server(settings) as first:
        streams = Streams(first.channel())
        job = await streams.create(job_spec(size=10))
        await streams.push(job.id, [[{"k": "a", "t": 1, "v": 1}, {"k": "a", "t": 2, "v": 2}]])
        await streams.wait(job.id, records_accepted=2)
        bus = pb.StreamEventSource(types=["reading.taken"])
        bus_job = await streams.create(job_spec(size=10, events=bus))
    # Down: events published meanwhile wait in the job's subscription.
    async with stream_server(settings) as second:
        streams = Streams(second.channel())
        publish = streams.events.Publish
        for t, v in ((1, 5), (3, 7), (25, 0)):
            await publish(
                events_pb2.PublishRequest(
                    event=cloud_event("reading.taken", data={"k": "b", "t": t, "v": v})
                )
            )
        await streams.push(job.id, [[{"k": "a", "t": 3, "v": 4}], [{"k": "a", "t": 99, "v": 0}]])
        await streams.wait(job.id, windows_emitted=1)
        await streams.wait(bus_job.id, windows_emitted=1)
        assert brief(await streams.results(job.id)) == [({"k": "a"}, 0, 10, aggs(3, 7, 1, 4))]
        assert brief(await streams.results(bus_job.id)) == [({"k": "b"}, 0, 10, aggs(2, 12, 5, 7))]
        assert (await streams.get(job.id)).counters.records_accepted == 4


async def test_tenants_see_only_their_own_jobs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **OVERRIDES, **auth_overrides())
    async with stream_server(settings) as s:
        acme = Streams(s.channel(), bearer(hs256_token(tenant="acme")))
        other = Streams(s.channel(), bearer(hs256_token(tenant="globex")))
        job = await acme.create(job_spec(size=10), name="acme-job")
        await other.create(job_spec(size=10), name="globex-job")
        for call in (
            other.get(job.id),
            other.stub.DeleteStreamJob(pb.DeleteStreamJobRequest(id=job.id), metadata=other.md),
            other.push(job.id, [[{"k": "a", "t": 1, "v": 1}]]),
        ):
            with pytest.raises(grpc.RpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await other.stub.ListStreamJobs(pb.ListStreamJobsRequest(), metadata=other.md)
        assert [j.name for j in listed.jobs] == ["globex-job"]
        # Another tenant's events never feed the job.
        source = pb.StreamEventSource(types=["reading.taken"])
        acme_bus = await acme.create(job_spec(size=10, events=source))
        data = {"k": "a", "t": 1, "v": 1}
        await other.events.Publish(
            events_pb2.PublishRequest(event=cloud_event("reading.taken", data=data)),
            metadata=other.md,
        )
        await acme.events.Publish(
            events_pb2.PublishRequest(
                event=cloud_event("reading.taken", data={"k": "a", "t": 2, "v": 2})
            ),
            metadata=acme.md,
        )
        done = await acme.wait(acme_bus.id, records_accepted=1)
        await asyncio.sleep(0.3)
        assert (await acme.get(acme_bus.id)).counters.records_accepted == 1
        assert done.counters.inputs_consumed == 1


async def _refused(call: Any, reason: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
    assert rich_details(info.value)["ErrorInfo"].reason == reason
    return str(info.value.details())


async def test_a_sink_table_belongs_to_the_tenant_that_first_used_it(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, **OVERRIDES, **auth_overrides())
    async with stream_server(settings) as s:
        acme = Streams(s.channel(), bearer(hs256_token(tenant="acme")))
        other = Streams(s.channel(), bearer(hs256_token(tenant="globex")))
        first = await acme.create(job_spec(size=10, table="shared_out"), name="a1")
        await _refused(other.create(job_spec(size=10, table="shared_out")), "TABLE_IN_USE")
        second = await acme.create(job_spec(size=10, table="shared_out"), name="a2")
        for job in (first, second):
            await acme.stub.DeleteStreamJob(pb.DeleteStreamJobRequest(id=job.id), metadata=acme.md)
        # acme's results stay in it, so it stays acme's.
        await _refused(other.create(job_spec(size=10, table="shared_out")), "TABLE_IN_USE")

        async with s.server.app.engine.begin() as conn:
            await conn.execute(text("CREATE TABLE notes (id INTEGER, private_column TEXT)"))
            await conn.run_sync(result_table("legacy_out").create)
            await conn.execute(
                text(
                    "INSERT INTO legacy_out (id, tenant, job_id, key, window_start, window_end, "
                    "record_count, aggregates, emitted_at) "
                    "VALUES ('w1', 'acme', 'j1', '[]', 0, 10, 1, '{}', 0)"
                )
            )
        # Another table of the database is refused without describing it.
        details = await _refused(
            other.create(job_spec(size=10, table="notes")), "TABLE_SHAPE_MISMATCH"
        )
        assert "private_column" not in details
        # A destination from before tables had owners goes by the tenant of its rows.
        await _refused(other.create(job_spec(size=10, table="legacy_out")), "TABLE_IN_USE")
        await acme.create(job_spec(size=10, table="legacy_out"), name="a3")
        await _refused(other.create(job_spec(size=10, table="legacy_out")), "TABLE_IN_USE")


async def test_migration_gives_existing_sink_tables_to_their_oldest_job(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        await migrate.upgrade(engine, "0006")
        async with engine.begin() as conn:
            for job_id, tenant, table, created in (
                ("j2", "globex", "out_a", 2.0),
                ("j1", "acme", "out_a", 1.0),
                ("j3", "globex", "out_b", 3.0),
                ("j4", "globex", "", 4.0),
            ):
                spec = {"sink": {"emit_events": True, "table": table}}
                await conn.execute(
                    text(
                        "INSERT INTO stream_jobs (id, tenant, name, spec, request_id, created_at, "
                        "counters, checkpoint_at, last_error, owner, lease_until) VALUES "
                        "(:id, :tenant, 'job', :spec, '', :created, '{}', 0, '', '', 0)"
                    ),
                    {"id": job_id, "tenant": tenant, "spec": json.dumps(spec), "created": created},
                )
        await migrate.upgrade(engine)
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT name, tenant FROM stream_tables ORDER BY name"))
            assert [tuple(r) for r in rows] == [("out_a", "acme"), ("out_b", "globex")]
    finally:
        await engine.dispose()


async def test_failed_checkpoint_changes_nothing_and_the_job_resumes(
    server: RunningServer, streams: Streams
) -> None:
    job = await streams.create(job_spec(size=10, table="fault_out"))
    await streams.push(job.id, [[{"k": "a", "t": 1, "v": 1}, {"k": "a", "t": 2, "v": 2}]])
    await streams.wait(job.id, records_accepted=2)
    engine = server.server.app.engine
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE fault_out"))
    # This step closes the window: its insert fails, so the whole step
    # (counters, window state, acks, result event) rolls back and retries.
    await streams.push(job.id, [[{"k": "a", "t": 3, "v": 4}, {"k": "a", "t": 50, "v": 0}]])
    deadline = asyncio.get_running_loop().time() + 10
    while (failing := await streams.get(job.id)).state != pb.STREAM_JOB_STATE_RETRYING:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    # The caller sees that a step failed and an error id (the server log has
    # the driver's text with the table); never SQL or exception names.
    assert "error id" in failing.last_error and "INSERT" not in failing.last_error
    assert failing.counters.records_accepted == 2
    await asyncio.sleep(0.5)
    assert await streams.results(job.id) == []
    async with engine.begin() as conn:
        await conn.run_sync(result_table("fault_out").create)
    done = await streams.wait(job.id, windows_emitted=1)
    assert done.state == pb.STREAM_JOB_STATE_RUNNING and not done.last_error
    assert done.counters.records_accepted == 4
    assert brief(await streams.results(job.id)) == [({"k": "a"}, 0, 10, aggs(3, 7, 1, 4))]


async def test_a_replica_takes_over_a_stopped_replicas_jobs(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, **{**OVERRIDES, "streams.lease": 1.0})
    async with stream_server(settings) as first, stream_server(settings) as second:
        one, two = Streams(first.channel()), Streams(second.channel())
        job = await one.create(job_spec(size=10))
        await one.push(job.id, [[{"k": "a", "t": 1, "v": 1}]])
        await one.wait(job.id, records_accepted=1)
        await asyncio.sleep(1.0)  # several claim rounds: the live owner keeps it
        assert job.id in first.server.app.streams.running
        assert job.id not in second.server.app.streams.running
        await first.server.app.streams.stop()
        await two.push(job.id, [[{"k": "a", "t": 2, "v": 2}], [{"k": "a", "t": 30, "v": 0}]])
        await two.wait(job.id, windows_emitted=1)
        assert job.id in second.server.app.streams.running
        assert brief(await two.results(job.id)) == [({"k": "a"}, 0, 10, aggs(2, 3, 1, 2))]


async def _table_rows(server: RunningServer, table: str) -> list[Any]:
    async with server.server.app.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        f"SELECT id, key, window_start, record_count FROM {table} "
                        "ORDER BY window_start, key"
                    )
                )
            ).all()
        )


async def test_idle_timeout_emits_quiet_windows_exactly_once_across_restarts(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url, **OVERRIDES)
    # The watermark delay keeps every window open by event time alone.
    spec = job_spec(size=10, delay=1000, lateness=5, idle=0.5, table="idle_out")
    async with stream_server(settings) as first:
        streams = Streams(first.channel())
        job = await streams.create(spec)
        await streams.push(
            job.id,
            [[{"k": "a", "t": 1, "v": 1}, {"k": "b", "t": 2, "v": 2}, {"k": "a", "t": 15, "v": 3}]],
        )
        done = await streams.wait(job.id, windows_emitted=3)
        c = done.counters
        assert (c.idle_flushes, c.windows_open, c.records_accepted) == (1, 0, 3)
        # Just far enough to close them all: the last end (20) + lateness (5).
        assert done.watermark.ToNanoseconds() == 25 * 10**9
        assert brief(await streams.results(job.id)) == [
            ({"k": "a"}, 0, 10, aggs(1, 1, 1, 1)),
            ({"k": "b"}, 0, 10, aggs(1, 2, 2, 2)),
            ({"k": "a"}, 10, 20, aggs(1, 3, 3, 3)),
        ]
        assert [r.window_start for r in await _table_rows(first, "idle_out")] == [0, 0, 10]
        # The stream resumes: a record for a flushed window is late, a new
        # window is flushed again once the stream is quiet again.
        await streams.push(job.id, [[{"k": "a", "t": 19, "v": 9}, {"k": "a", "t": 31, "v": 4}]])
        done = await streams.wait(job.id, windows_emitted=4)
        c = done.counters
        assert (c.idle_flushes, c.records_late, c.records_accepted) == (2, 1, 4)
        # Pushed and stopped before its idle timeout has passed (3 s): the
        # flush happens in the next process.
        slow = await streams.create(
            job_spec(size=10, delay=1000, idle=3, table="idle_slow"), name="slow"
        )
        await streams.push(slow.id, [[{"k": "a", "t": 1, "v": 1}, {"k": "a", "t": 2, "v": 2}]])
        await streams.wait(slow.id, records_accepted=2)
    async with stream_server(settings) as second:
        streams = Streams(second.channel())
        slow_done = await streams.wait(slow.id, windows_emitted=1)
        assert slow_done.counters.idle_flushes == 1
        await asyncio.sleep(1.0)  # two idle timeouts of the first job: nothing is open
        for job_id, table, windows in ((job.id, "idle_out", 4), (slow.id, "idle_slow", 1)):
            again = await streams.get(job_id)
            assert again.counters.windows_emitted == windows
            results = await streams.results(job_id)
            assert len(results) == windows
            rows = await _table_rows(second, table)
            assert len(rows) == windows and len({r.id for r in rows}) == windows
        assert (await streams.get(job.id)).counters.idle_flushes == 2
        assert brief(await streams.results(slow.id)) == [({"k": "a"}, 0, 10, aggs(2, 3, 1, 2))]


async def test_idle_timeout_counts_only_records_the_source_keeps(streams: Streams) -> None:
    source = pb.StreamEventSource(types=["sensor.*"])
    source.where["site"].string_value = "north"
    job = await streams.create(job_spec(size=10, delay=1000, idle=0.5, events=source))
    publish = streams.events.Publish
    await publish(
        events_pb2.PublishRequest(
            event=cloud_event("sensor.reading", data={"site": "north", "k": "a", "t": 1, "v": 1})
        )
    )
    # Events the job filters out keep arriving: the job is still idle.
    deadline = asyncio.get_running_loop().time() + 20
    while (await streams.get(job.id)).counters.windows_emitted < 1:
        assert asyncio.get_running_loop().time() < deadline, "never flushed"
        await publish(
            events_pb2.PublishRequest(
                event=cloud_event("sensor.reading", data={"site": "south", "k": "a", "t": 2})
            )
        )
        await asyncio.sleep(0.05)
    done = await streams.get(job.id)
    assert (done.counters.records_accepted, done.counters.idle_flushes) == (1, 1)
    assert brief(await streams.results(job.id)) == [({"k": "a"}, 0, 10, aggs(1, 1, 1, 1))]


async def test_idle_timeout_is_validated(streams: Streams) -> None:
    for idle in (-1.0, 31 * 86400.0):
        with pytest.raises(grpc.RpcError) as info:
            await streams.create(job_spec(size=10, idle=idle))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = [v.field for v in rich_details(info.value)["BadRequest"].field_violations]
        assert fields == ["job.spec.idle_timeout"]
    job = await streams.create(job_spec(size=10, idle=90))
    assert job.spec.idle_timeout.seconds == 90
    assert (await streams.get(job.id)).spec.idle_timeout.seconds == 90
    plain = await streams.create(job_spec(size=10))
    assert not plain.spec.HasField("idle_timeout")


async def test_stream_metrics_are_reported_by_get_metrics(
    server: RunningServer, streams: Streams
) -> None:
    health = health_pb2_grpc.HealthServiceStub(server.channel())

    async def section() -> dict[str, float]:
        reply = await health.GetMetrics(health_pb2.GetMetricsRequest())
        return dict(reply.snapshot.pipelines.values)

    before = await section()
    assert before["stream_jobs_running"] == 0
    assert before["stream_records_accepted"] == 0
    job = await streams.create(job_spec(size=10, idle=0.3))
    # One message, so the order is fixed: 25 closes [0, 10), then 3 is late.
    records: list[dict[str, Any]] = [{"k": "a", "t": 1, "v": 1}, {"k": "a", "t": 2}]
    records += [{"k": "a", "t": "x"}, {"k": "a", "t": 25, "v": 1}, {"k": "a", "t": 3, "v": 1}]
    await streams.push(job.id, [records])
    done = await streams.wait(job.id, idle_flushes=1)
    values = await section()
    assert values["stream_jobs_running"] == 1
    assert values["stream_records_accepted"] == 3
    assert values["stream_records_late"] == 1
    # Rejected at the door are still counted by the job that owns them.
    assert values["stream_records_rejected"] == 1
    assert values["stream_windows_emitted"] == 2 == done.counters.windows_emitted
    assert values["stream_idle_flushes"] == 1
    assert values["stream_checkpoints"] == done.counters.checkpoints
    assert values["stream_job_restarts"] == 0
    await streams.stub.DeleteStreamJob(pb.DeleteStreamJobRequest(id=job.id))
    assert (await section())["stream_jobs_running"] == 0


async def test_idle_timeout_waits_for_input_leased_by_a_dead_consumer(
    server: RunningServer, streams: Streams
) -> None:
    app = server.server.app
    job = await streams.create(job_spec(size=10, delay=1000, idle=0.3))
    await streams.push(job.id, [[{"k": "a", "t": 1, "v": 1}]])
    await streams.wait(job.id, records_accepted=1)
    await app.streams.stop()
    await streams.push(job.id, [[{"k": "a", "t": 2, "v": 2}]])
    # A consumer that dies holding the record: it is invisible until its
    # lease (streams.lease, 3 s) runs out, but it has arrived.
    sub = await app.events.subscriptions.get("default", f"stream:{job.id}")
    assert len(await app.events.subscriptions.lease(sub, "dead-consumer", 10)) == 1
    await app.streams.start()
    await asyncio.sleep(1.0)  # > 3 idle timeouts: the open window must wait
    assert (await streams.get(job.id)).counters.windows_emitted == 0
    done = await streams.wait(job.id, windows_emitted=1)
    assert (done.counters.records_accepted, done.counters.records_late) == (2, 0)
    assert brief(await streams.results(job.id)) == [({"k": "a"}, 0, 10, aggs(2, 3, 1, 2))]


async def test_a_one_subject_bus_source_is_consumed_in_batches(
    server: RunningServer, streams: Streams
) -> None:
    job = await streams.create(job_spec(size=10, events=pb.StreamEventSource(types=["meter.*"])))
    events = [
        cloud_event("meter.read", subject="meter-1", data={"k": "m", "t": i / 10, "v": i})
        for i in range(200)
    ] + [cloud_event("meter.read", subject="meter-1", data={"k": "m", "t": 50, "v": 0})]
    await streams.events.PublishBatch(events_pb2.PublishBatchRequest(events=events))
    done = await streams.wait(job.id, inputs_consumed=201)
    # One subject, yet not one event per checkpoint: the job's subscription
    # does not serialise per subject (it orders by event time itself).
    assert done.counters.checkpoints < 10
    assert done.counters.records_accepted == 201
    results = await streams.results(job.id)
    assert brief(results) == [
        ({"k": "m"}, 0, 10, aggs(100, sum(range(100)), 0, 99)),
        ({"k": "m"}, 10, 20, aggs(100, sum(range(100, 200)), 100, 199)),
    ]
    subs = server.server.app.events.subscriptions
    assert (await subs.get("default", f"stream:{job.id}")).ordered is False


async def test_subscriptions_keep_per_subject_order_unless_created_unordered(
    server: RunningServer, streams: Streams
) -> None:
    subs = server.server.app.events.subscriptions
    flt = EventFilter.build(["tick.*"])
    ordered = await subs.ensure("default", "ordered-sub", flt)
    unordered = await subs.ensure("default", "unordered-sub", flt, ordered=False)
    assert (ordered.ordered, unordered.ordered) == (True, False)
    # Reopening (without a filter) keeps the flag.
    assert (await subs.ensure("default", "unordered-sub", None)).ordered is False
    events = [cloud_event("tick.tock", subject="s", data={"i": i}) for i in range(5)]
    events.append(cloud_event("tick.tock", subject="other", data={"i": 5}))
    await streams.events.PublishBatch(events_pb2.PublishBatchRequest(events=events))
    first = await subs.lease(ordered, "c1", 10)
    assert [d.event.data["i"] for d in first] == [0, 5]  # the head of each subject
    assert await subs.lease(ordered, "c2", 10) == []  # the rest waits for the acks
    await subs.ack(ordered, [first[0].event.seq])
    assert [d.event.data["i"] for d in await subs.lease(ordered, "c2", 10)] == [1]
    got = await subs.lease(unordered, "c1", 10)
    assert [d.event.data["i"] for d in got] == [0, 1, 2, 3, 4, 5]
    # Competing consumers still never share a delivery.
    assert await subs.lease(unordered, "c2", 10) == []
