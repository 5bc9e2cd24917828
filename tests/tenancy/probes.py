"""The rows of the tenant matrix and the probes they are made of.

A row names one RPC, the resource kinds it reaches and how globex tries to
reach acme's: its probe makes globex's calls, asserts what globex must get
(NOT_FOUND, or only its own data) and returns globex's answers, which the
matrix then searches for acme's markers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from tests.tenancy.world import World, collect

Probe = Callable[[World], Awaitable[list[Message]]]
NOT_FOUND = grpc.StatusCode.NOT_FOUND

DATA_ROOTS = "pipeline file paths are shared by every tenant (pipelines owner)"


@dataclass(frozen=True)
class Row:
    rpc: str
    kinds: tuple[str, ...]
    how: str
    probe: Probe
    #: Why it fails on main, for rows another engineer's fix will flip.
    xfail: str = ""
    #: The probe makes acme act too: it checks acme's side itself.
    acme_acts: bool = False

    def param(self) -> Any:
        marks = [pytest.mark.xfail(strict=True, reason=self.xfail)] if self.xfail else []
        slug = "-".join(self.how.replace("'", "").split())[:60]
        return pytest.param(self, id=f"{self.rpc}:{slug}", marks=marks)


# --- probe builders ---------------------------------------------------------------


async def _answer(call: Any) -> list[Message]:
    if hasattr(call, "__aiter__"):
        return await collect(call)
    return [await call]


def not_found(*makes: Callable[[World], Any]) -> Probe:
    """Each call (unary or server stream) ends in NOT_FOUND."""

    async def probe(w: World) -> list[Message]:
        for make in makes:
            with pytest.raises(grpc.RpcError) as err:
                await _answer(make(w))
            assert err.value.code() == NOT_FOUND, err.value.details()
        return []

    return probe


def answers(*makes: Callable[[World], Any]) -> Probe:
    """Each call succeeds; what it answers is checked for acme's data."""

    async def probe(w: World) -> list[Message]:
        out: list[Message] = []
        for make in makes:
            out.extend(await _answer(make(w)))
        return out

    return probe


def empty(field: str, *makes: Callable[[World], Any]) -> Probe:
    """Each call answers an empty ``field`` (nothing of acme's matches)."""

    async def probe(w: World) -> list[Message]:
        out: list[Message] = []
        for make in makes:
            for message in await _answer(make(w)):
                assert not getattr(message, field), message
                out.append(message)
        return out

    return probe


async def status(call: Any) -> grpc.StatusCode:
    try:
        await _answer(call)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
