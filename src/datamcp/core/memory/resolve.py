"""Conflict detection and settlement: pure functions of the versions involved.

Two versions conflict when neither version vector includes the other. A
settled record stands for the set of concurrent *original* writes ("leaves")
that no other write includes; its content is a deterministic function of
that set. Because the set is the same whatever order stores exchange
versions in, every store settles a conflict the same way and all stores
converge, without minting new versions (which would themselves conflict).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datamcp.core.memory.clock import dominates, join
from datamcp.core.memory.model import Record, Strategy


class Relation(enum.Enum):
    SAME_OR_OLDER = "keep"  # the incoming version adds nothing
    NEWER = "take"  # the incoming version includes the local one
    CONCURRENT = "conflict"


def relation(local: Record, incoming: Record) -> Relation:
    if dominates(local.vv, incoming.vv):
        return Relation.SAME_OR_OLDER
    if dominates(incoming.vv, local.vv):
        return Relation.NEWER
    return Relation.CONCURRENT


@dataclass(frozen=True, slots=True)
class Policy:
    strategy: Strategy = Strategy.TIMESTAMP_WINS
    tie_break: Strategy = Strategy.TIMESTAMP_WINS
    priority: tuple[str, ...] = ()


def candidates(a: Record, b: Record) -> list[dict[str, Any]]:
    """The original writes behind ``a`` and ``b`` that the other does not include."""
    seen: set[tuple[int, str]] = set()
    out: list[dict[str, Any]] = []
    for mine, other in ((a, b), (b, a)):
        for leaf in mine.leaves or [mine.leaf()]:
            ident = (leaf["h"], leaf["o"])
            if other.vv.get(leaf["o"], 0) < leaf["h"] and ident not in seen:
                seen.add(ident)
                out.append(leaf)
    out.sort(key=lambda leaf: (leaf["h"], leaf["o"]))
    return out


def _order(
    leaves: Sequence[dict[str, Any]], strategy: Strategy, priority: Sequence[str]
) -> list[int]:
    """Indices of ``leaves``, best first, under a winner-picking strategy."""
    if strategy == Strategy.SOURCE_PRIORITY:
        rank = {store: i for i, store in enumerate(priority)}
        return sorted(
            range(len(leaves)),
            key=lambda i: (rank.get(leaves[i]["o"], len(rank)), -leaves[i]["h"], leaves[i]["o"]),
        )
    return sorted(range(len(leaves)), key=lambda i: (leaves[i]["h"], leaves[i]["o"]), reverse=True)


class NeedsManual(Exception):
    """A merge found a field changed differently on several sides, and the tie-break is manual."""


_MISSING: Any = object()


def _decode(text: str | None) -> Any:
    return _MISSING if text is None else json.loads(text)


def _merge(pairs: list[tuple[Any, Any]], order: list[int], manual: bool, path: str) -> Any:
    values = [v for _, v in pairs]
    if all(isinstance(v, dict) for v in values) and all(
        b is _MISSING or isinstance(b, dict) for b, _ in pairs
    ):
        keys: set[str] = set()
        for b, v in pairs:
            keys.update(v)
            if isinstance(b, dict):
                keys.update(b)
        out: dict[str, Any] = {}
        for k in sorted(keys):
            sub = [
                (b.get(k, _MISSING) if isinstance(b, dict) else _MISSING, v.get(k, _MISSING))
                for b, v in pairs
            ]
            merged = _merge(sub, order, manual, f"{path}.{k}")
            if merged is not _MISSING:
                out[k] = merged
        return out
    changed = [i for i in order if not _same(pairs[i][0], pairs[i][1])]
    if not changed:
        return pairs[order[0]][1]
    first = pairs[changed[0]][1]
    if all(_same(pairs[i][1], first) for i in changed[1:]):
        return first
    if manual:
        raise NeedsManual(path or "$")
    return first


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    return bool(a == b and type(a) is type(b))


def settle(local: Record, incoming: Record, policy: Policy) -> Record | None:
    """The record that settles two concurrent versions, or None under manual
    (or a merge whose tie-break is manual and that found a clash)."""
    if policy.strategy == Strategy.MANUAL:
        return None
    leaves = candidates(local, incoming)
    by_time = _order(leaves, Strategy.TIMESTAMP_WINS, ())
    if policy.strategy == Strategy.MERGE:
        tie = policy.tie_break
        order = _order(leaves, tie, policy.priority) if tie != Strategy.MANUAL else by_time
        try:
            merged = _merge(
                [
                    (_decode(leaf["b"]), _decode(None if leaf["d"] else leaf["v"]))
                    for leaf in leaves
                ],
                order,
                tie == Strategy.MANUAL,
                "",
            )
        except NeedsManual:
            return None
        winner = leaves[by_time[0]]
        value_json = None if merged is _MISSING else json.dumps(merged, separators=(",", ":"))
        deleted = merged is _MISSING
    else:
        winner = leaves[_order(leaves, policy.strategy, policy.priority)[0]]
        value_json, deleted = winner["v"], bool(winner["d"])
    return Record(
        tenant=local.tenant,
        namespace=local.namespace,
        key=local.key,
        value_json=value_json,
        hlc=int(winner["h"]),
        origin=str(winner["o"]),
        vv=join(local.vv, incoming.vv),
        tags=tuple(winner["t"]),
        metadata=dict(winner["m"]),
        created_at=min(local.created_at, incoming.created_at),
        updated_at=float(winner["u"]),
        expires_at=winner["x"],
        deleted=deleted,
        base_json=winner["b"],
        leaves=leaves,
    )


def same_content(a: Record, b: Record) -> bool:
    """Whether two records say the same thing (version vector included)."""
    return (
        a.vv == b.vv
        and a.value_json == b.value_json
        and a.deleted == b.deleted
        and a.version == b.version
    )


def conflict_id(tenant: str, namespace: str, key: str, versions: Sequence[Record]) -> str:
    """A conflict's id: the same for the same versions, whichever store found it."""
    parts = sorted(f"{r.version}:{sorted(r.vv.items())}" for r in versions)
    raw = "\n".join([tenant, namespace, key, *parts])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def winner_of(settled: Record, versions: Sequence[Record]) -> str:
    """What a conflict's settlement is recorded as: the version it kept, or
    "merged" when it is neither version."""
    for v in versions:
        if v.version == settled.version and v.value_json == settled.value_json:
            return str(v.version)
    if settled.leaves and any(
        leaf["h"] == settled.hlc and leaf["o"] == settled.origin and leaf["v"] == settled.value_json
        for leaf in settled.leaves
    ):
        return str(settled.version)
    return "merged"
