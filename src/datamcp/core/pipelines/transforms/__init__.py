"""The transform kinds: one module each, holding its spec schema
(``parse``) and its construction on the engine (``build``). Adding a kind
is one module and one line here."""

from __future__ import annotations

from types import ModuleType

from datamcp.core.pipelines.transforms import (
    aggregate,
    cast,
    dedupe,
    derive,
    drop,
    filter,
    lookup,
    rename,
    select,
    sort,
    validate,
)

REGISTRY: dict[str, ModuleType] = {
    m.KIND: m
    for m in (filter, select, rename, drop, cast, derive, validate, dedupe, aggregate, sort, lookup)
}
KINDS = tuple(REGISTRY)
