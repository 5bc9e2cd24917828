"""The settings whose values are lists and tables: their shapes checked, entry by entry.

Each function reads one ``json`` setting (or a few of one section) through the
:class:`~datamcp.config.reader.Reader`, records what is wrong, and returns the
typed value (a core type where the core has one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from croniter import croniter

from datamcp.config.fields import BY_KEY
from datamcp.config.reader import Reader
from datamcp.core.auth import ApiKey
from datamcp.core.context import valid_tenant
from datamcp.core.errors import InvalidArgument
from datamcp.core.memory.model import STORE_ID_RE, NamespacePolicy
from datamcp.core.memory.schedule import Schedule, request_from


@dataclass(frozen=True, slots=True)
class Quota:
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class Dependency:
    name: str
    target: str
    critical: bool = False


@dataclass(frozen=True, slots=True)
class MemoryStoreSettings:
    id: str
    url: str
    primary: bool = False


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """``stores`` empty means one store, ``primary``, in the application database."""

    stores: tuple[MemoryStoreSettings, ...]
    history_depth: int
    max_value_bytes: int
    purge_interval: float
    purge_batch: int
    policies: tuple[NamespacePolicy, ...]
    schedules: tuple[Schedule, ...]


def api_keys(r: Reader) -> tuple[ApiKey, ...]:
    value = r.raw["auth.api_keys"]
    if not isinstance(value, list):
        r.fail("auth.api_keys", "expected a list of tables")
        return ()
    keys: list[ApiKey] = []
    for i, item in enumerate(value):
        digest = str(item.get("sha256", "")).lower() if isinstance(item, dict) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            r.fail(
                "auth.api_keys",
                f"entry {i}: sha256 must be the hex SHA-256 of the key "
                "(print one with `datamcp auth hash-key`); plain keys are never stored",
            )
            continue
        assert isinstance(item, dict)
        tenant = str(item.get("tenant", "default"))
        if not valid_tenant(tenant):
            r.fail("auth.api_keys", f"entry {i}: tenant must be letters, digits, - _ .")
            continue
        roles = item.get("roles", [])
        keys.append(
            ApiKey(
                name=str(item.get("name", f"key-{i}")),
                sha256=digest,
                subject=str(item.get("subject", item.get("name", f"key-{i}"))),
                tenant=tenant,
                roles=tuple(str(x) for x in roles) if isinstance(roles, list) else (),
            )
        )
    return tuple(keys)


def method_roles(r: Reader) -> dict[str, tuple[str, ...]]:
    value = r.raw["auth.method_roles"]
    if not isinstance(value, dict) or not all(
        isinstance(v, list) and k.startswith("/") for k, v in value.items()
    ):
        r.fail("auth.method_roles", 'expected {"/pkg.Service/Method": ["role", ...]}')
        return {}
    return {k: tuple(str(x) for x in v) for k, v in value.items()}


def method_quotas(r: Reader) -> dict[str, Quota]:
    value = r.raw["rate_limit.methods"]
    out: dict[str, Quota] = {}
    if not isinstance(value, dict):
        r.fail("rate_limit.methods", 'expected {"/pkg.Service/Method": {rate, burst}}')
        return out
    for method, quota in value.items():
        try:
            rate, burst = float(quota["rate"]), int(quota["burst"])
            if rate <= 0 or burst < 1:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            r.fail("rate_limit.methods", f"{method}: needs rate > 0 and burst >= 1")
            continue
        out[method] = Quota(rate, burst)
    return out


def brokers(r: Reader) -> tuple[Mapping[str, Any], ...]:
    brokers = r.tables("events.brokers")
    for i, b in enumerate(brokers):
        kind = b.get("kind")
        needs = {"eventbridge": "bus_name", "sqs": "queue_url"}.get(str(kind))
        if needs is None:
            r.fail("events.brokers", f"entry {i}: kind must be eventbridge or sqs")
        elif not b.get(needs):
            r.fail("events.brokers", f"entry {i}: {kind} needs {needs}")
    return brokers


def grants(r: Reader) -> tuple[Mapping[str, Any], ...]:
    grants = r.tables("agents.grants")
    for i, g in enumerate(grants):
        tenants = g.get("tenants")
        if (
            set(g) != {"agent", "owner", "tenants"}
            or not all(isinstance(g[k], str) and g[k] for k in ("agent", "owner"))
            or not isinstance(tenants, list)
            or not tenants
            or not all(isinstance(t, str) and t for t in tenants)
        ):
            r.fail(
                "agents.grants",
                f'entry {i}: expected {{agent = "name", owner = "tenant", '
                'tenants = ["tenant", ...]}',
            )
    return grants


def dependencies(r: Reader) -> tuple[Dependency, ...]:
    value = r.raw["health.dependencies"]
    if not isinstance(value, list):
        r.fail("health.dependencies", "expected a list of {name, target, critical}")
        return ()
    deps: list[Dependency] = []
    for i, item in enumerate(value):
        target = str(item.get("target", "")) if isinstance(item, dict) else ""
        if not target.startswith(("tcp://", "http://", "https://")) or not isinstance(item, dict):
            r.fail(
                "health.dependencies", f"entry {i}: target must be tcp://host:port or http(s)://"
            )
            continue
        deps.append(
            Dependency(str(item.get("name", target)), target, bool(item.get("critical", False)))
        )
    return tuple(deps)


_STRATEGIES = ("timestamp_wins", "source_priority", "merge", "manual")
_TIE_BREAKS = ("timestamp_wins", "source_priority", "manual")


def plugins(r: Reader) -> tuple[str, ...]:
    value = r.raw["agents.plugins"]
    if not isinstance(value, list) or not all(isinstance(p, str) and ":" in p for p in value):
        r.fail("agents.plugins", 'expected a list of "module:Class" strings')
        return ()
    return tuple(value)


def directories(r: Reader, key: str) -> list[str]:
    value = r.raw[key]
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        r.fail(key, "expected a list of directories")
        return []
    return value


def sql_connections(r: Reader, key: str) -> dict[str, str]:
    """``agents.sql_connections`` or ``pipelines.sql_connections``: name = SQLAlchemy URL."""
    value = r.raw[key]
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        r.fail(key, "expected a table of name = SQLAlchemy URL")
        return {}
    return dict(value)


def http_apis(r: Reader, key: str) -> dict[str, Mapping[str, Any]]:
    """``agents.http_apis`` or ``pipelines.http_apis``: name = {base_url, ...} (the
    connectors check the rest of each entry)."""
    value = r.raw[key]
    if not isinstance(value, dict) or not all(
        isinstance(v, dict) and str(v.get("base_url", "")).startswith(("http://", "https://"))
        for v in value.values()
    ):
        r.fail(key, "expected a table of name = {base_url = 'https://...', ...}")
        return {}
    return dict(value)


def memory_limit(r: Reader) -> str:
    value = str(r.value("pipelines.memory_limit")).strip()
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value):
        r.fail("pipelines.memory_limit", "expected a size such as '512MB' or '2GB'")
        return str(BY_KEY["pipelines.memory_limit"].default)
    return value


def memory(r: Reader) -> MemorySettings:
    """The memory section: store ids and URLs; policies and schedules parsed by
    the core (``NamespacePolicy.from_config``, ``Schedule``), naming known stores."""
    stores: list[MemoryStoreSettings] = []
    for i, item in enumerate(r.tables("memory.stores")):
        store_id, url = str(item.get("id", "")), str(item.get("url", ""))
        if not STORE_ID_RE.match(store_id):
            r.fail("memory.stores", f"entry {i}: id must be lower-case letters, digits, - _")
        elif not url.startswith(("sqlite", "postgresql", "postgres")):
            r.fail("memory.stores", f"entry {i} ({store_id}): url: sqlite:/// or postgresql://")
        else:
            stores.append(MemoryStoreSettings(store_id, url, bool(item.get("primary", False))))
    ids = [s.id for s in stores]
    if len(set(ids)) != len(ids):
        r.fail("memory.stores", "store ids must be unique")
    if stores and sum(s.primary for s in stores) != 1:
        r.fail("memory.stores", "exactly one store must have primary = true")
    known = set(ids) or {"primary"}
    policies: list[NamespacePolicy] = []
    for i, raw in enumerate(r.tables("memory.policies")):
        try:
            policy = NamespacePolicy.from_config(raw)
        except InvalidArgument as exc:
            r.fail("memory.policies", f"entry {i}: {_violations(exc)}")
            continue
        if not set(policy.priority) <= known:
            r.fail("memory.policies", f"entry {i}: priority names unknown stores")
        policies.append(policy)
    schedules: list[Schedule] = []
    for i, raw in enumerate(r.tables("memory.schedules")):
        if not raw.get("name") or not croniter.is_valid(str(raw.get("cron", ""))):
            r.fail("memory.schedules", f"entry {i}: needs a name and a valid cron line")
            continue
        try:
            request = request_from(raw, trigger="config", sync_id="")
        except InvalidArgument as exc:
            r.fail("memory.schedules", f"entry {i}: {_violations(exc)}")
            continue
        if not set(request.stores) <= known:
            r.fail("memory.schedules", f"entry {i}: stores names unknown stores")
        schedules.append(Schedule.from_config(raw))
    return r.section(
        MemorySettings,
        "memory",
        stores=tuple(stores),
        policies=tuple(policies),
        schedules=tuple(schedules),
    )


def _violations(exc: InvalidArgument) -> str:
    allowed = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
    return f"{exc.message} ({allowed})" if allowed else exc.message
