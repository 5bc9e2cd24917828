"""One setting's declaration (:class:`Field`): key, kind, default, bounds, env var, flag.

The table of all of them is ``datamcp.config.fields.FIELDS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from datamcp.core.agents.manager.policy import TaskPolicy
from datamcp.core.auth import JwtSettings
from datamcp.core.pipelines.model import RunPolicy
from datamcp.core.streams.service import StreamPolicy

#: The kinds of value: ``file`` is the path of a file that must exist;
#: ``json`` is a list or table (TOML in the config file, JSON in the environment).
KINDS = ("str", "file", "int", "float", "bool", "json")


@dataclass(frozen=True, slots=True)
class Field:
    """One setting.

    A setting whose default is None is optional (an empty string unsets it).
    Numbers are never negative: ``minimum`` (default 0) and ``maximum`` bound
    them. ``choices`` are the allowed strings (matched case-insensitively, read
    lower-cased).
    """

    key: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    minimum: float = 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.key

    @property
    def env(self) -> str:
        return "DATAMCP_" + self.key.upper().replace(".", "_")

    @property
    def allowed(self) -> str:
        """The bounds or choices, as the reference shows them."""
        if self.choices:
            return " / ".join(self.choices)
        if self.kind in ("int", "float"):
            if self.maximum is not None:
                return f"{self.minimum} to {self.maximum}"
            return f">= {self.minimum}"
        if self.kind == "file":
            return "an existing file"
        return ""


def _defaults(policy: type) -> dict[str, Any]:
    """A core policy's defaults: settings that map onto it take their default from it."""
    return {f.name: f.default for f in dataclasses.fields(policy)}


TASK, STREAM, RUN, JWT = (_defaults(p) for p in (TaskPolicy, StreamPolicy, RunPolicy, JwtSettings))
