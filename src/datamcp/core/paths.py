"""Confinement of file paths to configured roots: the one rule every reader
and writer of caller-named files (pipeline sources and destinations, the
``profile`` agent) goes through.

A path is accepted only when its real path (every symlink followed, the
roots' own included) is one of the roots or lies under one, so neither
``..`` segments, nor an absolute path elsewhere, nor a link pointing out
can lead outside. Empty paths, NUL bytes and names the file system cannot
hold are refused as well.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from datamcp.core.pipelines.limits import shorten

NO_ROOTS = "NO_ROOTS"
"""No roots are configured: file access is off."""
INVALID = "INVALID"
"""Empty, or holds a NUL byte."""
UNUSABLE = "UNUSABLE"
"""The file system cannot look it up (a name too long, ...)."""
OUTSIDE = "OUTSIDE"
"""Resolves outside every root."""
NOT_FOUND = "NOT_FOUND"
"""Not an existing file under the roots (``must_exist``)."""
DIRECTORY = "DIRECTORY"
"""Names a directory where a new file was asked for."""


class PathRefused(ValueError):
    """A path :func:`confine` refused; ``kind`` says why (one of the
    constants of this module) and ``path`` is the path as given."""

    def __init__(self, kind: str, path: str, message: str | None = None) -> None:
        super().__init__(message or _message(kind, path))
        self.kind = kind
        self.path = path


def confine(path: str, roots: Sequence[str | os.PathLike[str]], *, must_exist: bool) -> Path:
    """The real path of ``path`` inside one of ``roots``.

    A relative path is looked up under each root in order: the first where
    it is a file wins; for a new file (not ``must_exist``), the first root.
    Every candidate looked at before the answer must resolve inside the
    roots, or the path is refused.

    Raises:
        PathRefused: no roots, an empty or invalid path, a path outside the
            roots, (``must_exist``) no such file, or (not ``must_exist``) a
            directory.
    """
    if not roots:
        raise PathRefused(NO_ROOTS, path)
    if not path or "\x00" in path:
        raise PathRefused(INVALID, path)
    try:
        return _confine(path, roots, must_exist=must_exist)
    except PathRefused:
        raise
    except (OSError, ValueError):  # a name too long for the file system, ...
        raise PathRefused(UNUSABLE, path) from None


def _confine(path: str, roots: Sequence[str | os.PathLike[str]], *, must_exist: bool) -> Path:
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    candidates = [Path(path)] if os.path.isabs(path) else [r / path for r in real_roots]
    chosen: Path | None = None
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if not any(real.is_relative_to(r) for r in real_roots):
            raise PathRefused(OUTSIDE, path)
        if real.is_file():
            return real
        if not must_exist and chosen is None:
            chosen = real
    if must_exist or chosen is None:
        raise PathRefused(NOT_FOUND, path)
    if chosen.is_dir():
        raise PathRefused(DIRECTORY, path)
    return chosen


def _message(kind: str, path: str) -> str:
    shown = repr(shorten(path))
    return {
        NO_ROOTS: "no roots are configured; file access is off",
        INVALID: "empty or invalid path",
        UNUSABLE: "not a usable path (too long, or a part is too long)",
        OUTSIDE: f"{shown} is outside the data roots",
        NOT_FOUND: f"{shown}: no such file under the data roots",
        DIRECTORY: f"{shown} is a directory",
    }.get(kind, f"{shown} is not allowed")
