"""The source and destination kinds: one module each, holding its spec
schema (``parse_source`` / ``parse_destination``), its configuration checks
and its construction. They live with the adapters they need and register
here when ``datamcp.adapters.pipelines`` is imported; the spec parser and
the connectors look them up. Adding a kind is one module and one line in
that package's ``register`` call. (Transform kinds: ``.transforms``.)"""

from __future__ import annotations

from types import ModuleType

SOURCES: dict[str, ModuleType] = {}
DESTINATIONS: dict[str, ModuleType] = {}


def register(*modules: ModuleType) -> None:
    for module in modules:
        if hasattr(module, "parse_source"):
            SOURCES[module.KIND] = module
        if hasattr(module, "parse_destination"):
            DESTINATIONS[module.KIND] = module
