"""``drop: [col, ...]``: removes these columns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.transforms import select

if TYPE_CHECKING:  # the engine is imported when a plan is built
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "drop"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    return select.parse(c, o, path)


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    b.need(o["columns"], f"{path}.columns")
    gone = set(o["columns"])
    b.stage(path)
    b.layout.cols = [c for c in b.layout.cols if c not in gone]
