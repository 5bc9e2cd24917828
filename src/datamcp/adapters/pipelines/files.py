"""Files of pipelines (sources and destinations) are confined to the
configured data roots."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamcp.core import paths
from datamcp.core.paths import PathRefused
from datamcp.core.pipelines.ports import PermanentError


def confine(path: str, roots: Sequence[Path], *, must_exist: bool) -> Path:
    """The real path of ``path`` inside one of the data ``roots`` (the rule:
    :func:`datamcp.core.paths.confine`).

    Raises:
        PathRefused: no roots configured, or the path is outside them, or
            (``must_exist``) it is not a file.
    """
    if not roots:
        raise PathRefused(
            paths.NO_ROOTS, path, "no pipelines.data_roots are configured; file access is off"
        )
    return paths.confine(path, roots, must_exist=must_exist)


def open_temp(target: Path, temp: Path, **kw: Any) -> Any:
    """The temp file a destination writes before ``commit_temp`` renames it
    over ``target`` (readers never see half a file).

    Raises:
        PermanentError: reason ``DESTINATION_ERROR``.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return open(temp, "w", **kw)
    except OSError as exc:
        raise PermanentError(
            f"cannot write {target.name}: {exc.strerror}", "DESTINATION_ERROR"
        ) from None


def commit_temp(file: Any, temp: Path, target: Path) -> None:
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(temp, target)


def abort_temp(file: Any, temp: Path) -> None:
    if file is not None:
        with contextlib.suppress(Exception):
            file.close()
    with contextlib.suppress(OSError):
        os.unlink(temp)
