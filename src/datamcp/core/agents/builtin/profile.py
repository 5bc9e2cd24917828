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
import csv
import hashlib
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from datamcp.core.agents.agent import Agent, AgentError, Capability, TaskContext, TaskRefused
from datamcp.core.errors import ConfigError

_INT = re.compile(r"^[+-]?\d{1,18}$")
_REAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")
_KEY_CHARS = 200  # longer strings are keyed by a prefix and a digest
_NUMERIC = frozenset({"integer", "real"})
_TEMPORAL = frozenset({"date", "datetime"})

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


class _Column:
    """Running statistics of one column."""

    __slots__ = (
        "bools",
        "capped",
        "counts",
        "float_sum",
        "int_sum",
        "kinds",
        "name",
        "num_max",
        "num_min",
        "numbers",
        "str_max",
        "str_min",
        "values",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.values = 0
        self.kinds: Counter[str] = Counter()
        self.counts: dict[tuple[Any, ...], int] = {}
        self.capped = False
        self.numbers = 0
        self.int_sum = 0
        self.float_sum = 0.0
        self.num_min: float | None = None
        self.num_max: float | None = None
        self.str_min: str | None = None
        self.str_max: str | None = None
        self.bools: set[bool] = set()

    def add(self, kind: str, value: Any, max_distinct: int) -> None:
        self.values += 1
        self.kinds[kind] += 1
        if kind in _NUMERIC:
            self.numbers += 1
            if kind == "integer":
                self.int_sum += value
            else:
                self.float_sum += value
            if self.num_min is None or value < self.num_min:
                self.num_min = value
            if self.num_max is None or value > self.num_max:
                self.num_max = value
            key: tuple[Any, ...] = ("n", value)
        elif kind == "boolean":
            self.bools.add(value)
            key = ("b", value)
        elif kind == "json":
            text = json.dumps(value, sort_keys=True, default=str)
            key = ("j", *_short_key(text))
        else:
            if self.str_min is None or value < self.str_min:
                self.str_min = value
            if self.str_max is None or value > self.str_max:
                self.str_max = value
            key = ("s", *_short_key(value))
        if key in self.counts:
            self.counts[key] += 1
        elif len(self.counts) < max_distinct:
            self.counts[key] = 1
        else:
            self.capped = True

    def summary(self, rows: int, top: int) -> dict[str, Any]:
        kind = _column_type(set(self.kinds))
        low: Any = None
        high: Any = None
        mean: float | None = None
        if kind in _NUMERIC and self.numbers:
            low, high = self.num_min, self.num_max
            mean = (self.int_sum + self.float_sum) / self.numbers
        elif kind == "boolean":
            low, high = min(self.bools), max(self.bools)
        elif kind in {"text", "date", "datetime"}:
            low, high = self.str_min, self.str_max
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], str(item[0][1])))
        return {
            "name": self.name,
            "type": kind,
            "types": dict(self.kinds.most_common()),
            "count": self.values,
            "nulls": rows - self.values,
            "distinct": len(self.counts),
            "distinct_capped": self.capped,
            "min": low,
            "max": high,
            "mean": mean,
            "top": [{"value": key[1], "count": count} for key, count in ranked[:top]],
        }


class _Profile:
    """Columns being profiled; rows are fed in as (name, raw value) pairs."""

    def __init__(
        self, *, csv_text: bool, wanted: Sequence[str] | None, max_columns: int, max_distinct: int
    ) -> None:
        self.csv_text = csv_text
        self.wanted = set(wanted) if wanted else None
        self.max_columns = max_columns
        self.max_distinct = max_distinct
        self.columns: dict[str, _Column] = {name: _Column(name) for name in wanted or ()}
        self.columns_capped = False
        self.rows = 0
        self.skipped = 0

    def add_row(self, cells: Iterator[tuple[str, Any]]) -> None:
        self.rows += 1
        for name, raw in cells:
            column = self.columns.get(name)
            if column is None:
                if self.wanted is not None:
                    continue
                if len(self.columns) >= self.max_columns:
                    self.columns_capped = True
                    continue
                column = self.columns[name] = _Column(name)
            kind, value = _classify(raw, self.csv_text)
            if kind != "null":
                column.add(kind, value, self.max_distinct)

    def summary(self, top: int) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "columns": [c.summary(self.rows, top) for c in self.columns.values()],
            "columns_capped": self.columns_capped,
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
        fmt = payload.get("format") or _format_of(real)
        if fmt not in {"csv", "jsonl"}:
            raise TaskRefused(
                f"cannot tell the format of {real.name}; pass format csv or jsonl",
                reason="INVALID_INPUT",
            )
        delimiter = payload.get("delimiter") or ("\t" if real.suffix.lower() == ".tsv" else ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise TaskRefused("delimiter must be one character", reason="INVALID_INPUT")
        profile = _Profile(
            csv_text=fmt == "csv",
            wanted=wanted,
            max_columns=self.max_columns,
            max_distinct=self.max_distinct,
        )
        reader: _FileReader = (
            _CsvReader(real, profile, delimiter, self.null_values)
            if fmt == "csv"
            else _JsonLinesReader(real, profile, self.max_line_bytes)
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
        profile = _Profile(
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
        given = Path(path)
        candidates = [given] if given.is_absolute() else [root / given for root in self.roots]
        allowed = [
            real
            for real in (Path(os.path.realpath(c)) for c in candidates)
            if any(real.is_relative_to(root) for root in self.roots)
        ]
        if not allowed:
            raise TaskRefused(f"{path} is outside the profile roots", reason="PATH_NOT_ALLOWED")
        for real in allowed:
            if real.is_file():
                return real
        raise TaskRefused(f"{path} is not a file under the profile roots", reason="FILE_NOT_FOUND")


class _FileReader:
    """Feeds a file to a profile a batch at a time (called on a worker thread)."""

    def __init__(self, path: Path, profile: _Profile) -> None:
        self.path = path
        self.profile = profile
        self.done = False
        self.size = 0
        self._raw: IO[bytes] | None = None

    def open(self) -> None:
        self._raw = self.path.open("rb")
        self.size = os.fstat(self._raw.fileno()).st_size

    def fraction(self) -> float:
        if self._raw is None or self._raw.closed or not self.size:
            return 0.0
        return min(1.0, self._raw.tell() / self.size)

    def read(self, rows: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()


class _CsvReader(_FileReader):
    def __init__(
        self, path: Path, profile: _Profile, delimiter: str, null_values: frozenset[str]
    ) -> None:
        super().__init__(path, profile)
        self.delimiter = delimiter
        self.null_values = null_values
        self._rows: Iterator[list[str]] = iter(())
        self._header: list[str] = []
        self._text: io.TextIOWrapper | None = None

    def open(self) -> None:
        super().open()
        assert self._raw is not None
        self._text = io.TextIOWrapper(self._raw, encoding="utf-8-sig", errors="replace", newline="")
        self._rows = csv.reader(self._text, delimiter=self.delimiter)
        try:
            self._header = _unique(next(self._rows, []))
        except csv.Error as exc:
            raise TaskRefused(f"{self.path.name}: bad CSV: {exc}", reason="BAD_FILE") from exc
        if not self._header:
            self.done = True
        wanted = self.profile.wanted
        missing = sorted(wanted - set(self._header)) if wanted else []
        if missing:
            raise AgentError(
                f"columns not in the file: {', '.join(missing)}", reason="UNKNOWN_COLUMN"
            )
        if wanted is None and len(self._header) > self.profile.max_columns:
            self.profile.columns_capped = True
        if wanted is None:
            for name in self._header[: self.profile.max_columns]:
                self.profile.columns.setdefault(name, _Column(name))

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        super().close()

    def read(self, rows: int) -> None:
        nulls = self.null_values
        header = self._header
        try:
            for _ in range(rows):
                row = next(self._rows, None)
                if row is None:
                    self.done = True
                    return
                if not row:
                    continue  # a blank line
                self.profile.add_row(
                    (name, None if cell in nulls else cell)
                    for name, cell in zip(header, row, strict=False)
                )
        except csv.Error as exc:
            raise TaskRefused(f"{self.path.name}: bad CSV: {exc}", reason="BAD_FILE") from exc


class _JsonLinesReader(_FileReader):
    def __init__(self, path: Path, profile: _Profile, max_line_bytes: int) -> None:
        super().__init__(path, profile)
        self.max_line_bytes = max_line_bytes

    def read(self, rows: int) -> None:
        assert self._raw is not None
        done = 0
        while done < rows:
            line = self._raw.readline(self.max_line_bytes + 1)
            if not line:
                self.done = True
                return
            if len(line) > self.max_line_bytes and not line.endswith(b"\n"):
                self._skip_rest_of_line()
                self.profile.skipped += 1
                continue
            text = line.decode("utf-8", errors="replace").strip()
            if not text:
                continue
            try:
                record = json.loads(text, parse_constant=str)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                self.profile.skipped += 1
                continue
            self.profile.add_row((str(k), v) for k, v in record.items())
            done += 1

    def _skip_rest_of_line(self) -> None:
        assert self._raw is not None
        while True:
            chunk = self._raw.readline(self.max_line_bytes)
            if not chunk or chunk.endswith(b"\n"):
                return


def _classify(raw: Any, csv_text: bool) -> tuple[str, Any]:
    """(kind, value) of a cell; CSV text is read as numbers/booleans when it is one."""
    if raw is None:
        return "null", None
    if isinstance(raw, bool):
        return "boolean", raw
    if isinstance(raw, int):
        return "integer", raw
    if isinstance(raw, float):
        return ("real", raw) if math.isfinite(raw) else ("text", str(raw))
    if isinstance(raw, dict | list):
        return "json", raw
    text = str(raw)
    if csv_text:
        stripped = text.strip()
        if not stripped:
            return "null", None
        if _INT.match(stripped):
            return "integer", int(stripped)
        if _REAL.match(stripped):
            number = float(stripped)
            if math.isfinite(number):
                return "real", number
        lowered = stripped.lower()
        if lowered in {"true", "false"}:
            return "boolean", lowered == "true"
    if _DATE.match(text):
        return "date", text
    if _DATETIME.match(text):
        return "datetime", text
    return "text", text


def _column_type(kinds: set[str]) -> str:
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return next(iter(kinds))
    if kinds <= _NUMERIC:
        return "real"
    if kinds <= _TEMPORAL:
        return "datetime"
    return "mixed"


def _short_key(text: str) -> tuple[str, ...]:
    """A bounded counting key: the text, or its prefix plus a digest."""
    if len(text) <= _KEY_CHARS:
        return (text,)
    digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).hexdigest()
    return (text[:_KEY_CHARS] + "…", digest)


def _unique(header: list[str]) -> list[str]:
    """Column names with blanks named by position and repeats numbered."""
    seen: set[str] = set()
    names: list[str] = []
    for index, raw in enumerate(header):
        name = raw.strip() or f"column_{index + 1}"
        base, n = name, 1
        while name in seen:
            n += 1
            name = f"{base}.{n}"
        seen.add(name)
        names.append(name)
    return names


def _format_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    return None


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
