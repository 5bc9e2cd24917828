"""The ``profile`` agent: per-column statistics of a data file or of rows.

``profile.file`` reads a CSV or JSON Lines file under one of the configured
roots, streaming it in batches on a worker thread (memory stays bounded by
the distinct-value cap, not the file size). ``profile.rows`` profiles rows
given inline, including an ``sql.query`` result as it is.

Per column: ``count`` (non-null values), ``nulls`` (null, empty or
missing; ``count + nulls`` is the row count), ``distinct``, ``min``,
``max``, ``mean`` (numeric columns), ``top`` (most frequent values) and the
inferred ``type`` with the ``types`` it was inferred from. Distinct values
are counted up to ``max_distinct`` per column; past that ``distinct`` is a
lower bound, ``top`` counts are approximate and ``distinct_capped`` is true.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from datamcp.core import paths
from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext, TaskRefused
from datamcp.core.agents.builtin.profile_files import (
    CsvReader,
    FileReader,
    JsonLinesReader,
    format_of,
)
from datamcp.core.agents.builtin.profile_stats import Profile
from datamcp.core.errors import ConfigError

_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["path"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "minLength": 1, "description": "under a configured root"},
        "format": {"enum": ["csv", "jsonl"], "description": "default: from the extension"},
        "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "delimiter": {"type": "string", "minLength": 1, "maxLength": 1},
    },
}

_ROWS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "oneOf": [
        {
            "required": ["columns", "rows"],
            "properties": {
                "columns": {
                    "type": "array",
                    "items": {
                        "oneOf": [
                            {"type": "string"},
                            {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        ]
                    },
                },
                "rows": {"type": "array", "items": {"type": "array"}},
            },
        },
        {
            "required": ["records"],
            "properties": {"records": {"type": "array", "items": {"type": "object"}}},
        },
    ],
}


class ProfileAgent(Agent):
    """Profiles CSV / JSON Lines files under configured roots, and inline rows.

    Config keys:
        roots: directories files may be read from (symlinks are resolved
            first; nothing outside these is read).
        max_distinct: distinct values counted per column (default 10000).
        max_columns: columns profiled at most (default 1000).
        top: most frequent values reported per column (default 5).
        progress_every: rows between progress reports (default 10000).
        max_line_bytes: longest JSON line read; longer ones are skipped
            (default 1 MiB).
        null_values: CSV cells read as null (default "", "NULL", "null", "\\N").
    """

    name = "profile"
    description = "Column statistics (types, nulls, distinct, min/max/mean, top values)"
    capabilities = (
        Capability(
            "profile.file",
            "Profile a CSV or JSON Lines file under a configured root",
            _FILE_SCHEMA,
        ),
        Capability(
            "profile.rows",
            "Profile rows given inline ({columns, rows} as sql.query returns, or {records})",
            _ROWS_SCHEMA,
        ),
    )
    max_concurrency = 4

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        problems: list[str] = []
        roots = self.config.get("roots", [])
        if isinstance(roots, str | os.PathLike) or not isinstance(roots, Sequence):
            problems.append("profile agent: roots must be a list of directories")
            roots = []
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots)
        self.max_distinct = _count(self.config, "max_distinct", 10_000, problems)
        self.max_columns = _count(self.config, "max_columns", 1000, problems)
        self.top = _count(self.config, "top", 5, problems)
        self.progress_every = _count(self.config, "progress_every", 10_000, problems)
        self.max_line_bytes = _count(self.config, "max_line_bytes", 1 << 20, problems)
        nulls = self.config.get("null_values", ["", "NULL", "null", "\\N"])
        if not isinstance(nulls, Sequence) or not all(isinstance(v, str) for v in nulls):
            problems.append("profile agent: null_values must be a list of strings")
            nulls = [""]
        self.null_values = frozenset(nulls)
        if problems:
            raise ConfigError(problems)

    async def run(self, ctx: TaskContext, capability: str, payload: Any) -> Any:
        if not isinstance(payload, Mapping):
            raise TaskRefused("input must be an object", reason="INVALID_INPUT")
        if capability == "profile.file":
            return await self._profile_file(ctx, payload)
        if capability == "profile.rows":
            return await self._profile_rows(ctx, payload)
        raise TaskRefused(f"profile agent has no capability {capability}", reason="NO_CAPABILITY")

    async def _profile_file(self, ctx: TaskContext, payload: Mapping[str, Any]) -> dict[str, Any]:
        path = payload.get("path")
        if not isinstance(path, str) or not path:
            raise TaskRefused("path must be a non-empty string", reason="INVALID_INPUT")
        wanted = _names(payload.get("columns"))
        real = await asyncio.to_thread(self._resolve, path)
        fmt = payload.get("format") or format_of(real)
        if fmt not in {"csv", "jsonl"}:
            raise TaskRefused(
                f"cannot tell the format of {real.name}; pass format csv or jsonl",
                reason="INVALID_INPUT",
            )
        delimiter = payload.get("delimiter") or ("\t" if real.suffix.lower() == ".tsv" else ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise TaskRefused("delimiter must be one character", reason="INVALID_INPUT")
        profile = Profile(
            csv_text=fmt == "csv",
            wanted=wanted,
            max_columns=self.max_columns,
            max_distinct=self.max_distinct,
        )
        reader: FileReader = (
            CsvReader(real, profile, delimiter, self.null_values)
            if fmt == "csv"
            else JsonLinesReader(real, profile, self.max_line_bytes)
        )
        try:
            await asyncio.to_thread(reader.open)
            while not reader.done:
                if ctx.remaining() <= 0:
                    raise AgentError("no time left to finish the profile", reason="PROFILE_TIMEOUT")
                await asyncio.to_thread(reader.read, self.progress_every)
                await ctx.progress(
                    min(99.0, reader.fraction() * 100), f"{profile.rows} rows profiled"
                )
        finally:
            await asyncio.to_thread(reader.close)
        await ctx.progress(100.0, f"{profile.rows} rows profiled")
        result = profile.summary(self.top)
        result["source"] = {"path": str(real), "format": fmt}
        if fmt == "jsonl":
            result["skipped_lines"] = profile.skipped
        return result

    async def _profile_rows(self, ctx: TaskContext, payload: Mapping[str, Any]) -> dict[str, Any]:
        if "records" in payload:
            records = payload["records"]
            if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
                raise TaskRefused("records must be a list of objects", reason="INVALID_INPUT")
            total = len(records)
            rows: Iterator[Iterator[tuple[str, Any]]] = (
                ((str(k), v) for k, v in r.items()) for r in records
            )
            names: list[str] | None = None
        else:
            names = _names(
                [c.get("name") if isinstance(c, Mapping) else c for c in payload.get("columns", [])]
                if isinstance(payload.get("columns"), list)
                else None
            )
            data = payload.get("rows")
            if names is None or not isinstance(data, list):
                raise TaskRefused("give columns and rows, or records", reason="INVALID_INPUT")
            for index, row in enumerate(data):
                if not isinstance(row, list) or len(row) != len(names):
                    raise TaskRefused(
                        f"row {index} must be a list of {len(names)} values", reason="INVALID_INPUT"
                    )
            total = len(data)
            rows = (zip(names, row, strict=True) for row in data)
        if names is not None and len(set(names)) != len(names):
            raise TaskRefused("column names must be unique", reason="INVALID_INPUT")
        profile = Profile(
            csv_text=False,
            wanted=names,
            max_columns=self.max_columns if names is None else len(names),
            max_distinct=self.max_distinct,
        )

        def step() -> bool:
            for _ in range(self.progress_every):
                row = next(rows, None)
                if row is None:
                    return True
                profile.add_row(row)
            return False

        while not await asyncio.to_thread(step):
            await ctx.progress(min(99.0, 100 * profile.rows / max(1, total)), "profiling rows")
        await ctx.progress(100.0, f"{profile.rows} rows profiled")
        return profile.summary(self.top)

    def _resolve(self, path: str) -> Path:
        """The real path of ``path`` (relative ones are tried under each root)."""
        if not self.roots:
            raise TaskRefused("no profile roots are configured", reason="PATH_NOT_ALLOWED")
        try:
            return paths.confine(path, self.roots, must_exist=True)
        except paths.PathRefused as exc:
            if exc.kind == paths.OUTSIDE:
                raise TaskRefused(
                    f"{path} is outside the profile roots", reason="PATH_NOT_ALLOWED"
                ) from None
            if exc.kind == paths.NOT_FOUND:
                raise TaskRefused(
                    f"{path} is not a file under the profile roots", reason="FILE_NOT_FOUND"
                ) from None
            raise TaskRefused(f"path: {exc}", reason="INVALID_INPUT") from None


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TaskRefused("columns must be a list of names", reason="INVALID_INPUT")
    return list(value)


def _count(config: Mapping[str, Any], key: str, default: int, problems: list[str]) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problems.append(f"profile agent: {key} must be a positive integer, got {value!r}")
        return default
    return value
