"""Files of pipelines (sources and destinations) are confined to the
configured data roots."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamcp.core.pipelines.limits import shorten
from datamcp.core.pipelines.ports import PermanentError


class PathRefused(ValueError):
    pass


def confine(path: str, roots: Sequence[Path], *, must_exist: bool) -> Path:
    """The real path of ``path`` inside one of ``roots``.

    A relative path is looked up under each root in order (the first where it
    exists; for a new file, the first root). Symlinks are resolved before the
    check, so neither ``..`` nor a link can lead outside.

    Raises:
        PathRefused: no roots configured, or the path is outside them, or
            (``must_exist``) it is not a file.
    """
    if not roots:
        raise PathRefused("no pipelines.data_roots are configured; file access is off")
    if not path or "\x00" in path:
        raise PathRefused("empty or invalid path")
    try:
        return _confine(path, roots, must_exist=must_exist)
    except PathRefused:
        raise
    except (OSError, ValueError):  # a name too long for the file system, ...
        raise PathRefused("not a usable path (too long, or a part is too long)") from None


def _confine(path: str, roots: Sequence[Path], *, must_exist: bool) -> Path:
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    candidates = [Path(path)] if os.path.isabs(path) else [r / path for r in real_roots]
    chosen: Path | None = None
    for cand in candidates:
        real = Path(os.path.realpath(cand))
        inside = any(real == r or r in real.parents for r in real_roots)
        if not inside:
            raise PathRefused(f"{shorten(path)!r} is outside the data roots")
        if real.is_file() or (not must_exist and chosen is None):
            if real.is_file():
                return real
            chosen = real
    if must_exist or chosen is None:
        raise PathRefused(f"{shorten(path)!r}: no such file under the data roots")
    if chosen.is_dir():
        raise PathRefused(f"{shorten(path)!r} is a directory")
    return chosen


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
