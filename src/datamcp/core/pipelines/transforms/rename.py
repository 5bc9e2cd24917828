"""``rename: {old: new}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from datamcp.core.pipelines.checker import Checker, long_form

if TYPE_CHECKING:  # the engine is imported when a plan is built
    from datamcp.core.pipelines.plan import PlanBuilder

KIND = "rename"


def parse(c: Checker, o: Any, path: str) -> dict[str, Any] | None:
    mapping = c.str_map(long_form(o), f"{path}.columns")
    if not mapping:
        c.fail(f"{path}.columns", "required: old name: new name")
    elif len(set(mapping.values())) != len(mapping):
        c.fail(f"{path}.columns", "two columns cannot get the same new name")
    return {"columns": mapping}


def build(b: PlanBuilder, o: Mapping[str, Any], path: str) -> None:
    mapping = o["columns"]
    b.need(list(mapping), f"{path}.columns")
    cols = [mapping.get(c, c) for c in b.layout.cols]
    if len(set(cols)) != len(cols):
        b.fail(f"{path}.columns", "renaming makes names repeat")
        return
    b.stage(path)
    old = b.layout
    b.layout.phys = {mapping.get(c, c): old.phys[c] for c in old.cols}
    b.layout.kinds = {mapping.get(c, c): old.kinds[c] for c in old.cols}
    b.layout.cols = cols
