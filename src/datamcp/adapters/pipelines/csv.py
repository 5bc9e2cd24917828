"""CSV files: a source read by DuckDB's CSV reader (parallel, streamed in
Arrow chunks) and a destination written by Arrow's CSV writer.

Every value is read as text (a ``cast`` transform types it, rejecting what
does not convert). Options: ``delimiter``, ``quote``, ``escape`` (doubled
quotes by default), ``null_values`` (texts read as null, none by default:
an empty field is empty text, which casts read as null), ``no_header`` +
``columns``, ``columns`` to pick, ``encoding`` (utf-8, utf-16, latin-1).
A record the reader cannot take (wrong number of fields, a stray quote,
bad encoding) is rejected with its line number and the reason; blank lines
are not rows. A row over 4 MiB fails the run (SOURCE_ERROR, naming the
line): past such a row DuckDB's reader can lose track of the records that
follow, so the run does not trust them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import mmap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamcp.adapters.pipelines.files import abort_temp, commit_temp, open_temp
from datamcp.adapters.pipelines.values import plain
from datamcp.core.pipelines.checker import Checker, char, delimiter, file_options, null_values
from datamcp.core.pipelines.ports import PermanentError, SourceBatch, WriteResult

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# The longest row. DuckDB's reader keeps buffers of twice this per thread, so
# it sets the reader's memory (and a run's peak RSS) as much as the row limit.
MAX_LINE = 4 * 1024 * 1024
ENCODINGS = ("utf-8", "utf-16", "latin-1")
_REASONS = {
    "UNQUOTED VALUE": "a quote inside a field that is not quoted as a whole",
    "INVALID ENCODING": "the row is not valid text in the file's encoding",
    "INVALID UNICODE": "the row is not valid text in the file's encoding",
}


class CsvSource:
    columnar = True

    def __init__(
        self,
        path: Path,
        *,
        delimiter: str = ",",
        quote: str = '"',
        escape: str = "",
        null_values: Sequence[str] = (),
        encoding: str = "utf-8",
        no_header: bool = False,
        columns: Sequence[str] = (),
        display: str = "",
        threads: int = 0,
    ) -> None:
        self.path = path
        self.delimiter = delimiter
        self.quote = quote
        self.escape = escape or quote
        self.null_values = list(null_values)
        self.encoding = encoding
        self.no_header = no_header
        self.wanted = list(columns)
        self.display = display or str(path)
        self.threads = threads
        self._con: duckdb.DuckDBPyConnection | None = None
        self._reader: Any = None
        self._width = 0
        self._done = False
        self._names: list[str] = []
        self._all: list[str] = []
        self._scan_con: Any = None

    async def open(self) -> list[str]:
        return await asyncio.to_thread(self._open)

    def _header(self) -> list[str]:
        try:
            with open(self.path, newline="", encoding=_python(self.encoding)) as f:
                first = next(csv.reader(f, **self._dialect()), None)
        except (OSError, UnicodeError, csv.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise PermanentError(f"cannot read {self.display}: {reason}", "SOURCE_ERROR") from None
        header = [h.strip() for h in (first or [])]
        if not header:
            raise PermanentError(f"{self.display}: the file has no header", "SOURCE_ERROR")
        if len(set(header)) != len(header) or not all(header):
            raise PermanentError(
                f"{self.display}: header names must be unique and non-empty", "SOURCE_ERROR"
            )
        return header

    def _dialect(self) -> dict[str, Any]:
        out: dict[str, Any] = {"delimiter": self.delimiter, "quotechar": self.quote}
        if self.escape != self.quote:
            out.update(escapechar=self.escape, doublequote=False)
        return out

    def _long_lines(self) -> None:
        """Fails on a line of ``MAX_LINE`` or more bytes: DuckDB's reader
        skips a line longer than its buffer (``2 * MAX_LINE``) without a
        word. Every aligned window of ``MAX_LINE`` bytes must hold a line
        break, so no line reaches twice that; a few ``find`` calls per file."""
        size = self.path.stat().st_size
        if size < 2 * MAX_LINE:
            return
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            for start in range(0, size - MAX_LINE + 1, MAX_LINE):
                if m.find(b"\n", start, start + MAX_LINE) < 0:
                    raise PermanentError(
                        f"{self.display}: a row near byte {start:,} is longer than the "
                        f"{MAX_LINE:,}-character limit",
                        "SOURCE_ERROR",
                    )

    def _open(self) -> list[str]:
        import duckdb  # with the run, never with the spec (the Lambda zip has no DuckDB)

        self._long_lines()
        names = list(self.wanted) if self.no_header else self._header()
        if self.wanted and not self.no_header:
            missing = [c for c in self.wanted if c not in names]
            if missing:
                raise PermanentError(
                    f"{self.display}: no column(s) {', '.join(missing)} "
                    f"(header: {', '.join(names)})",
                    "SOURCE_ERROR",
                )
        self._width = len(names)
        config: dict[str, Any] = {"memory_limit": "256MB"}
        if self.threads:
            config["threads"] = self.threads
        self._con = duckdb.connect(":memory:", config=config)
        rel = self._scan(self._con, len(names))
        pick = self.wanted or names
        self._all = names
        self._base = rel
        self.narrow(pick)
        return list(pick)

    def _scan(self, con: duckdb.DuckDBPyConnection, width: int) -> duckdb.DuckDBPyRelation:
        return con.read_csv(
            str(self.path),
            auto_detect=False,
            columns={f"c{i}": "VARCHAR" for i in range(width)},
            header=not self.no_header,
            sep=self.delimiter,
            quotechar=self.quote,
            escapechar=self.escape,
            # DuckDB reads empty fields as null unless told other markers;
            # with none given, a NUL-only field (never text here) stands in.
            na_values=self.null_values or ["\x00"],
            allow_quoted_nulls=False,
            encoding=self.encoding,
            strict_mode=True,
            store_rejects=True,
            max_line_size=MAX_LINE,
            buffer_size=2 * MAX_LINE,
        )

    def relation(
        self, con: duckdb.DuckDBPyConnection, names: Mapping[str, str]
    ) -> duckdb.DuckDBPyRelation:
        """The scan as a relation on the engine's connection, the columns in
        ``names`` (column -> new name) only: the engine runs its first
        stages inside the scan. Read its rejects with ``scan_rejects``."""
        import duckdb  # with the run, never with the spec (the Lambda zip has no DuckDB)

        self._scan_con = con
        index = self._all.index
        base = self._scan(con, len(self._all))
        return base.select(
            *[duckdb.ColumnExpression(f"c{index(c)}").alias(new) for c, new in names.items()]
        )

    def scan_error(self, exc: Exception) -> PermanentError:
        """A reader failure as the run's error, in words for the caller."""
        text = str(exc).splitlines()[0]
        if "invalid state" in text:
            text = (
                "not a well-formed CSV file (mixed line endings, or a quote the "
                "quote/escape options do not describe)"
            )
        return PermanentError(f"{self.display}: {text[:300]}", "SOURCE_ERROR")

    def scan_rejects(self) -> list[tuple[Any, str, int]]:
        """The records the relation's scan could not take (after it ran)."""
        return self._rejects(self._scan_con)

    @property
    def kinds(self) -> dict[str, str]:
        """Every column is text (a ``cast`` types it)."""
        return {c: "string" for c in self._names}

    def narrow(self, columns: Sequence[str]) -> None:
        """Read only ``columns`` from here on (the others are not converted)."""
        import duckdb  # with the run, never with the spec (the Lambda zip has no DuckDB)

        self._names = list(columns)
        index = self._all.index
        column = duckdb.ColumnExpression
        self._rel = self._base.select(*[column(f"c{index(c)}") for c in columns])

    async def read(self, size: int) -> SourceBatch | None:
        return await asyncio.to_thread(self._read, size)

    def _read(self, size: int) -> SourceBatch | None:
        import duckdb  # with the run, never with the spec (the Lambda zip has no DuckDB)
        import pyarrow as pa

        if self._done or self._con is None:
            return None
        try:
            if self._reader is None:
                self._reader = self._rel.to_arrow_reader(size)
            batch = self._reader.read_next_batch()
        except StopIteration:
            self._done = True
            rejects = self._rejects(self._con)
            if not rejects:
                return None
            empty = pa.table({c: pa.array([], pa.string()) for c in self._names})
            return SourceBatch(empty, rejects)
        except duckdb.Error as exc:
            raise self.scan_error(exc) from None
        table = pa.Table.from_batches([batch]).rename_columns(self._names)
        return SourceBatch(table)

    def _rejects(self, con: duckdb.DuckDBPyConnection) -> list[tuple[Any, str, int]]:
        out: list[tuple[Any, str, int]] = []
        rows = con.sql(
            "SELECT line, arg_min(error_type::VARCHAR, coalesce(column_idx, 0)), "
            "any_value(csv_line) FROM reject_errors GROUP BY line ORDER BY line"
        ).fetchall()
        for line, kind, _text in rows:
            if kind == "LINE SIZE OVER MAXIMUM":
                raise PermanentError(
                    f"{self.display}: line {line}: a row is longer than the "
                    f"{MAX_LINE:,}-character limit",
                    "SOURCE_ERROR",
                )
        for line, kind, text in rows:
            fields = _fields(str(text or "")[:4096], self._dialect())
            reason = _REASONS.get(str(kind), str(kind).lower())
            if kind in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
                reason = f"expected {self._width} fields, got {len(fields)}"
            out.append((fields, reason, int(line or 0)))
        return out

    async def close(self) -> None:
        if self._con is not None:
            con, self._con = self._con, None
            await asyncio.to_thread(con.close)


def _fields(text: str, dialect: Mapping[str, Any]) -> list[str]:
    try:
        return next(csv.reader(io.StringIO(text, newline=""), **dialect), [])
    except csv.Error:
        return [text]


def _python(encoding: str) -> str:
    return {"utf-8": "utf-8-sig", "utf-16": "utf-16", "latin-1": "latin-1"}[encoding]


class CsvDestination:
    """A CSV file with a header, written to a temp file next to the target
    and renamed over it on commit, so readers never see half a file."""

    def __init__(self, path: Path, run_id: str, *, delimiter: str = ",") -> None:
        self.path = path
        self.delimiter = delimiter
        self.temp = path.with_name(f".{path.name}.{run_id[:8]}.tmp")
        self._file: Any = None
        self._writer: Any = None
        self._kinds: list[str] = []

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        self._kinds = list(types)
        await asyncio.to_thread(self._open, list(columns))

    def _open(self, columns: list[str]) -> None:
        self._file = open_temp(self.path, self.temp, newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, delimiter=self.delimiter)
        self._writer.writerow(columns)

    async def write(self, table: pa.Table) -> WriteResult:
        await asyncio.to_thread(self._write, table)
        return WriteResult(table.num_rows)

    def _write(self, table: pa.Table) -> None:
        cols = [c.to_pylist() for c in plain(table, self._kinds).columns]
        self._writer.writerows(zip(*cols, strict=True))

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        commit_temp(self._file, self.temp, self.path)
        self._file = None

    async def abort(self) -> None:
        abort_temp(self._file, self.temp)
        self._file = None


# ---- the ``csv`` kind ---------------------------------------------------------------------

KIND = "csv"
SOURCE_OPTIONS = ("path", "delimiter", "quote", "escape", "null_values", "encoding")


def parse_source(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = file_options(c, raw, path)
    if o is None:
        return None
    c.unknown(o, path, (*SOURCE_OPTIONS, "no_header", "columns"))
    out: dict[str, Any] = {
        "path": c.string(o, "path", path, required=True),
        "columns": c.names(o.get("columns"), f"{path}.columns"),
        "encoding": c.choice(o, "encoding", path, ENCODINGS),
        "delimiter": delimiter(c, o, path),
        "quote": char(c, o, "quote", path, '"'),
        "null_values": null_values(c, o, path),
        "no_header": c.boolean(o, "no_header", path),
    }
    out["escape"] = char(c, o, "escape", path, out["quote"])
    if out["quote"] == out["delimiter"]:
        c.fail(f"{path}.quote", "must differ from the delimiter")
    if out["no_header"] and not out["columns"]:
        c.fail(f"{path}.columns", "required when no_header is true")
    return out


def parse_destination(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = file_options(c, raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("path", "delimiter"))
    return {"path": c.string(o, "path", path, required=True), "delimiter": delimiter(c, o, path)}


def check_source(connectors: Any, o: Mapping[str, Any], path: str, problems: list[Any]) -> None:
    connectors.check_path(o["path"], f"{path}.path", problems)


check_destination = check_source


def source(connectors: Any, o: Mapping[str, Any], ctx: Any, where: str) -> CsvSource:
    return CsvSource(
        connectors.file(o["path"], where),
        delimiter=o["delimiter"],
        quote=o.get("quote", '"'),
        escape=o.get("escape", ""),
        null_values=o.get("null_values", []),
        encoding=o.get("encoding", "utf-8"),
        no_header=o["no_header"],
        columns=o["columns"],
        display=o["path"],
    )


def destination(connectors: Any, o: Mapping[str, Any], run_id: str, where: str) -> CsvDestination:
    return CsvDestination(
        connectors.target(o["path"], where), run_id, delimiter=o.get("delimiter", ",")
    )
