"""Put the generated stubs of gen/datamcp/v1 into the builds.

A wheel gets them as ``datamcp/v1`` (a namespace portion: no
``datamcp/__init__.py``, so the server's own ``datamcp`` package can sit
beside it). An sdist carries them under ``_gen/`` so a wheel can be built
from it away from the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":  # dev-mode-dirs points at gen/ itself
            return
        root = Path(self.root)
        candidates = [
            root.parent.parent / "gen" / "datamcp" / "v1",
            root / "_gen" / "datamcp" / "v1",
        ]
        source = next((c for c in candidates if (c / "agents_pb2.py").is_file()), None)
        if source is None:
            raise RuntimeError("generated stubs not found: run `make gen` in the repository")
        target = "datamcp/v1" if self.target_name == "wheel" else "_gen/datamcp/v1"
        for path in sorted(source.iterdir()):
            if path.suffix in (".py", ".pyi"):
                build_data["force_include"][str(path)] = f"{target}/{path.name}"
