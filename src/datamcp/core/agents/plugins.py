"""Plugin agents: classes named in config (``module:Class``) or registered by
installed packages under the ``datamcp.agents`` entry-point group."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points

from datamcp.core.agents.agent import CAPABILITY_RE, Agent
from datamcp.core.errors import ConfigError

GROUP = "datamcp.agents"


def load_plugins(names: Sequence[str]) -> list[Agent]:
    """Instantiate every plugin agent; raises ConfigError naming each bad one."""
    found: list[tuple[str, object]] = []
    problems: list[str] = []
    for ep in entry_points(group=GROUP):
        try:
            found.append((f"entry point {ep.name}", ep.load()))
        except Exception as exc:
            problems.append(f"entry point {GROUP}:{ep.name}: {type(exc).__name__}: {exc}")
    for name in names:
        module, _, attr = name.partition(":")
        try:
            found.append((name, getattr(importlib.import_module(module), attr)))
        except Exception as exc:
            problems.append(f"agents.plugins {name!r}: {type(exc).__name__}: {exc}")
    agents: list[Agent] = []
    for where, cls in found:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            problems.append(f"{where}: not a datamcp.core.agents.agent.Agent subclass")
            continue
        if not cls.name or not cls.capabilities:
            problems.append(f"{where}: needs a name and at least one capability")
            continue
        bad = [c.name for c in cls.capabilities if not CAPABILITY_RE.match(c.name)]
        if bad:
            problems.append(f"{where}: capability names must be lower-case dotted words: {bad}")
            continue
        agent = cls()
        agent.kind = "plugin"
        agents.append(agent)
    if problems:
        raise ConfigError(problems)
    return agents
