"""CSV and JSON Lines files: sources and destinations, confined to data roots.

Reading and writing run in worker threads (one call per batch). A file
destination writes a temp file next to the target and renames it over the
target on commit, so readers never see half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datamcp.core.pipelines.limits import shorten
from datamcp.core.pipelines.ports import PermanentError, SourceBatch, WriteResult
from datamcp.core.pipelines.rows import Batch, json_safe

csv.field_size_limit(16 * 1024 * 1024)


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


# ---- sources ----------------------------------------------------------------------------


class CsvSource:
    """Rows as lists of strings. A row with the wrong number of fields, or
    that the CSV parser cannot read, is rejected with the reason."""

    def __init__(
        self,
        path: Path,
        *,
        delimiter: str = ",",
        no_header: bool = False,
        columns: Sequence[str] = (),
        display: str = "",
    ) -> None:
        self.path = path
        self.delimiter = delimiter
        self.no_header = no_header
        self.wanted = list(columns)
        self.display = display or str(path)
        self._file: io.TextIOWrapper | None = None
        self._reader: Iterator[list[str]] | None = None
        self._width = 0
        self._pick: list[int] | None = None
        self._line = 0
        self._header: list[str] = []
        # Chunks without quotes (or NULs) are split by hand, which gives the
        # csv module's rows about twice as fast; the first chunk with one
        # hands the rest of the file (that chunk included) to csv.reader.
        self._plain = delimiter not in '\r\n"\x00'

    @property
    def text_columns(self) -> frozenset[str]:
        return frozenset(self.wanted or self._header)

    async def open(self) -> list[str]:
        return await asyncio.to_thread(self._open)

    def _open(self) -> list[str]:
        try:
            self._file = open(self.path, newline="", encoding="utf-8-sig", errors="replace")  # noqa: SIM115
        except OSError as exc:
            raise PermanentError(
                f"cannot open {self.display}: {exc.strerror}", "SOURCE_ERROR"
            ) from None
        self._reader = csv.reader(self._file, delimiter=self.delimiter)
        if self.no_header:
            self._width = len(self.wanted)
            return list(self.wanted)
        try:
            header = next(self._reader, None)
        except csv.Error as exc:
            raise PermanentError(f"{self.display}: bad header: {exc}", "SOURCE_ERROR") from None
        self._line = 1
        if not header:
            self._header = list(self.wanted)
            self._width = len(self.wanted)
            return list(self.wanted)
        header = [h.strip() for h in header]
        if len(set(header)) != len(header) or not all(header):
            raise PermanentError(
                f"{self.display}: header names must be unique and non-empty", "SOURCE_ERROR"
            )
        self._header = header
        self._width = len(header)
        if self.wanted:
            missing = [c for c in self.wanted if c not in header]
            if missing:
                raise PermanentError(
                    f"{self.display}: no column(s) {', '.join(missing)} "
                    f"(header: {', '.join(header)})",
                    "SOURCE_ERROR",
                )
            self._pick = [header.index(c) for c in self.wanted]
            return list(self.wanted)
        return header

    async def read(self, size: int) -> SourceBatch | None:
        return await asyncio.to_thread(self._read, size)

    def read_blocking(self, size: int) -> SourceBatch | None:
        """``read`` for a caller already on a worker thread (the engine reads
        and transforms many chunks in one thread hop)."""
        return self._read(size)

    def _read(self, size: int) -> SourceBatch | None:
        if self._reader is None:
            return None
        start = self._line
        rows: Batch | None = self._split(size) if self._plain else None
        split = rows is not None
        if rows is None:
            rows = self._careful(size)
        if not rows:
            return None
        self._line = start + len(rows)
        width = self._width
        rejects: list[tuple[list[Any], str, int]] = []
        if len(set(map(len, rows))) > 1 or (rows and len(rows[0]) != width):
            good: Batch = []
            for n, r in enumerate(rows):
                if len(r) == width:
                    good.append(r)
                elif r and not (split and r == [""]):  # a blank line split by hand
                    rejects.append((r, f"expected {width} fields, got {len(r)}", start + n + 1))
            rows = good
        if self._pick is not None:
            pick = self._pick
            rows = [[r[i] for i in pick] for r in rows]
        return SourceBatch(rows, rejects)

    def _split(self, size: int) -> Batch | None:
        """Up to ``size`` rows split by hand, or None (from here on the csv
        module reads) when this chunk has a quote, a NUL or a huge line."""
        assert self._file is not None
        lines = list(itertools.islice(self._file, size))
        text = "".join(lines)
        # One column: a blank line (csv gives []) would split to a row [""].
        if '"' in text or "\x00" in text or len(text) > csv.field_size_limit() or self._width <= 1:
            self._plain = False
            self._reader = csv.reader(itertools.chain(lines, self._file), delimiter=self.delimiter)
            return None
        # newline="" lines end at \r\n, \n or \r, so no other \r or \n is
        # in a line; a blank line gives [""] (csv: [], skipped by ``_read``).
        d = self.delimiter
        return [ln.rstrip("\r\n").split(d) for ln in lines]

    def _careful(self, size: int) -> Batch:
        """Up to ``size`` rows from the csv module.

        Raises:
            PermanentError: a record the csv module cannot read (a field over
                the size limit). The run fails: after such an error the
                parser's place in the file is unknown (inside a quoted field,
                maybe), so going on could turn the rest of that field into
                rows; nothing read so far is dropped unaccounted.
        """
        assert self._reader is not None
        rows: Batch = []
        while len(rows) < size:
            try:
                row = next(self._reader)
            except StopIteration:
                break
            except csv.Error as exc:
                number = self._line + len(rows) + 1
                limit = csv.field_size_limit()
                detail = (
                    f"a field is larger than the {limit:,}-character limit"
                    if "field limit" in str(exc)
                    else f"unreadable CSV ({exc})"
                )
                raise PermanentError(
                    f"{self.display}: record {number}: {detail}", "SOURCE_ERROR"
                ) from None
            rows.append(row)
        return rows

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._reader = None


class JsonlSource:
    """One JSON object per line. Columns: the given ones, or the keys of the
    first batch's objects in order of appearance (later new keys are
    ignored). A line that is not a JSON object is rejected."""

    def __init__(self, path: Path, *, columns: Sequence[str] = (), display: str = "") -> None:
        self.path = path
        self.columns = list(columns)
        self.display = display or str(path)
        self._file: io.TextIOWrapper | None = None
        self._first: list[tuple[Any, str, int]] | None = None
        self._line = 0
        self._rejects: list[tuple[list[Any], str, int]] = []

    @property
    def text_columns(self) -> frozenset[str]:
        return frozenset()

    async def open(self) -> list[str]:
        return await asyncio.to_thread(self._open)

    def _open(self) -> list[str]:
        try:
            self._file = open(self.path, encoding="utf-8-sig", errors="replace")  # noqa: SIM115
        except OSError as exc:
            raise PermanentError(
                f"cannot open {self.display}: {exc.strerror}", "SOURCE_ERROR"
            ) from None
        if not self.columns:
            self._first = self._objects(1000)
            seen: dict[str, None] = {}
            for obj, _raw, _n in self._first:
                for key in obj:
                    seen.setdefault(str(key), None)
            self.columns = list(seen)
        return list(self.columns)

    def _objects(self, size: int) -> list[tuple[Any, str, int]]:
        assert self._file is not None
        out: list[tuple[Any, str, int]] = []
        loads = json.loads
        for line in itertools.islice(self._file, size):
            self._line += 1
            text = line.strip()
            if not text:
                continue
            try:
                obj = loads(text)
            except ValueError as exc:
                self._rejects.append(([text[:1000]], f"invalid JSON: {exc}", self._line))
                continue
            if not isinstance(obj, dict):
                self._rejects.append(([text[:1000]], "not a JSON object", self._line))
                continue
            out.append((obj, text, self._line))
        return out

    async def read(self, size: int) -> SourceBatch | None:
        return await asyncio.to_thread(self._read, size)

    def read_blocking(self, size: int) -> SourceBatch | None:
        """``read`` for a caller already on a worker thread."""
        return self._read(size)

    def _read(self, size: int) -> SourceBatch | None:
        if self._file is None:
            return None
        if self._first is not None:
            objs, self._first = self._first, None
            objs += self._objects(max(0, size - len(objs)))
        else:
            objs = self._objects(size)
        rejects, self._rejects = self._rejects, []
        if not objs and not rejects:
            return None
        cols = self.columns
        rows = [[o.get(c) for c in cols] for o, _t, _n in objs]
        return SourceBatch(rows, rejects)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ---- destinations --------------------------------------------------------------------


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(json_safe(value), separators=(",", ":"))
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return json_safe(value)


class FileDestination:
    """CSV (with a header) or JSON Lines, written to a temp file and renamed
    over the target on commit."""

    def __init__(self, path: Path, fmt: str, run_id: str, *, delimiter: str = ",") -> None:
        self.path = path
        self.fmt = fmt
        self.delimiter = delimiter
        self.temp = path.with_name(f".{path.name}.{run_id[:8]}.tmp")
        self._file: io.TextIOWrapper | None = None
        self._columns: list[str] = []
        self._plain = True

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        self._columns = list(columns)
        self._plain = not any(t in ("json", "timestamp") for t in types)
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.temp, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise PermanentError(
                f"cannot write {self.path.name}: {exc.strerror}", "DESTINATION_ERROR"
            ) from None
        if self.fmt == "csv":
            self._writer = csv.writer(self._file, delimiter=self.delimiter)
            self._writer.writerow(self._columns)

    async def write(self, rows: Batch) -> WriteResult:
        await asyncio.to_thread(self._write, rows)
        return WriteResult(len(rows))

    def write_blocking(self, rows: Batch) -> WriteResult:
        """``write`` for a caller already on a worker thread."""
        self._write(rows)
        return WriteResult(len(rows))

    def _write(self, rows: Batch) -> None:
        assert self._file is not None
        if self.fmt == "csv":
            if self._plain:
                self._writer.writerows(rows)
            else:
                self._writer.writerows([[_cell(v) for v in r] for r in rows])
            return
        cols = self._columns
        dumps = json.dumps
        self._file.write(
            "".join(
                dumps(dict(zip(cols, r, strict=False)), default=json_safe, separators=(",", ":"))
                + "\n"
                for r in rows
            )
        )

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.temp, self.path)

    async def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            os.unlink(self.temp)
