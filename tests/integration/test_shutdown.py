"""Graceful shutdown of the in-process server: in-flight calls finish within
the grace, new calls are refused, calls beyond the grace are cut off."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from tests.probe import S, probe_call, probe_registration
from tests.support import make_settings, running_server


async def test_in_flight_call_finishes_and_new_calls_are_refused(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            sleep = probe_call(channel, "Sleep")
            in_flight = asyncio.ensure_future(sleep(S(value="1.0")))
            await asyncio.sleep(0.2)
            stopping = asyncio.create_task(srv.server.stop(5.0))
            await asyncio.sleep(0.2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sleep(S(value="0"), timeout=2)
            assert (await in_flight).value == "slept"
            await stopping
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_calls_longer_than_the_grace_are_cancelled(tmp_path: Path) -> None:
    async with running_server(make_settings(tmp_path), [probe_registration()]) as srv:
        async with srv.channel() as channel:
            in_flight = asyncio.ensure_future(probe_call(channel, "Sleep")(S(value="30")))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await srv.server.stop(0.5)
            elapsed = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await in_flight
    assert elapsed < 5
    assert err.value.code() in {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
