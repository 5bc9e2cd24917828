"""JSON Lines files: one JSON object per line. The source's columns are the
given ones, or the keys of the first 1,000 objects in order of appearance
(later new keys are ignored); a line that is not a JSON object is rejected
with the reason. The destination writes one object per row (JSON columns
as JSON), to a temp file renamed over the target on commit."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datamcp.adapters.pipelines.files import abort_temp, commit_temp, open_temp
from datamcp.adapters.pipelines.values import plain, python_rows
from datamcp.core.pipelines.checker import Checker, file_options
from datamcp.core.pipelines.frame import RowBatches, json_safe
from datamcp.core.pipelines.ports import PermanentError, SourceBatch, WriteResult

if TYPE_CHECKING:
    import pyarrow as pa


class JsonlSource:
    def __init__(
        self, path: Path, *, columns: Sequence[str] = (), encoding: str = "utf-8", display: str = ""
    ) -> None:
        self.path = path
        self.columns = list(columns)
        self.encoding = encoding
        self.display = display or str(path)
        self._file: io.TextIOWrapper | None = None
        self._first: list[Any] | None = None
        self._line = 0
        self._rejects: list[tuple[Any, str, int]] = []
        self._batches: RowBatches | None = None

    async def open(self) -> list[str]:
        return await asyncio.to_thread(self._open)

    def _open(self) -> list[str]:
        enc = "utf-8-sig" if self.encoding == "utf-8" else self.encoding
        try:
            self._file = open(self.path, encoding=enc, errors="strict")  # noqa: SIM115
        except OSError as exc:
            raise PermanentError(
                f"cannot open {self.display}: {exc.strerror}", "SOURCE_ERROR"
            ) from None
        if not self.columns:
            self._first = self._objects(1000)
            seen: dict[str, None] = {}
            for obj in self._first:
                for key in obj:
                    seen.setdefault(str(key), None)
            self.columns = list(seen)
        self._batches = RowBatches(self.columns)
        return list(self.columns)

    def _objects(self, size: int) -> list[Any]:
        assert self._file is not None
        out: list[Any] = []
        loads = json.loads
        while len(out) < size:
            try:
                line = self._file.readline()
            except UnicodeDecodeError:
                raise PermanentError(
                    f"{self.display}: line {self._line + 1} is not valid {self.encoding} text",
                    "SOURCE_ERROR",
                ) from None
            if not line:
                break
            self._line += 1
            text = line.strip()
            if not text:
                continue
            try:
                obj = loads(text)
            except ValueError as exc:
                self._rejects.append(({"_line": text[:1000]}, f"invalid JSON: {exc}", self._line))
                continue
            if not isinstance(obj, dict):
                self._rejects.append(({"_line": text[:1000]}, "not a JSON object", self._line))
                continue
            out.append(obj)
        return out

    async def read(self, size: int) -> SourceBatch | None:
        return await asyncio.to_thread(self._read, size)

    def _read(self, size: int) -> SourceBatch | None:
        if self._file is None or self._batches is None:
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
        table, rejects = self._batches.table([[o.get(c) for c in cols] for o in objs], rejects)
        return SourceBatch(table, rejects)

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class JsonlDestination:
    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self.temp = path.with_name(f".{path.name}.{run_id[:8]}.tmp")
        self._file: io.TextIOWrapper | None = None
        self._columns: list[str] = []
        self._kinds: list[str] = []

    async def open(self, columns: Sequence[str], types: Sequence[str]) -> None:
        self._columns, self._kinds = list(columns), list(types)
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self._file = open_temp(self.path, self.temp, encoding="utf-8")

    async def write(self, table: pa.Table) -> WriteResult:
        await asyncio.to_thread(self._write, table)
        return WriteResult(table.num_rows)

    def _write(self, table: pa.Table) -> None:
        assert self._file is not None
        rows = python_rows(plain(table, self._kinds), self._kinds)
        cols, dumps = self._columns, json.dumps
        self._file.write(
            "".join(
                dumps(dict(zip(cols, r, strict=True)), default=json_safe, separators=(",", ":"))
                + "\n"
                for r in rows
            )
        )

    async def commit(self) -> None:
        await asyncio.to_thread(self._commit)

    def _commit(self) -> None:
        commit_temp(self._file, self.temp, self.path)
        self._file = None

    async def abort(self) -> None:
        abort_temp(self._file, self.temp)
        self._file = None


# ---- the ``jsonl`` kind -------------------------------------------------------------------

KIND = "jsonl"


def parse_source(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = file_options(c, raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("path", "columns", "encoding"))
    return {
        "path": c.string(o, "path", path, required=True),
        "columns": c.names(o.get("columns"), f"{path}.columns"),
        "encoding": c.choice(o, "encoding", path, ("utf-8", "utf-16", "latin-1")),
    }


def parse_destination(c: Checker, raw: Any, path: str) -> dict[str, Any] | None:
    o = file_options(c, raw, path)
    if o is None:
        return None
    c.unknown(o, path, ("path",))
    return {"path": c.string(o, "path", path, required=True)}


def check_source(connectors: Any, o: Mapping[str, Any], path: str, problems: list[Any]) -> None:
    connectors.check_path(o["path"], f"{path}.path", problems)


check_destination = check_source


def source(connectors: Any, o: Mapping[str, Any], ctx: Any, where: str) -> JsonlSource:
    return JsonlSource(
        connectors.file(o["path"], where),
        columns=o["columns"],
        encoding=o.get("encoding", "utf-8"),
        display=o["path"],
    )


def destination(connectors: Any, o: Mapping[str, Any], run_id: str, where: str) -> JsonlDestination:
    return JsonlDestination(connectors.target(o["path"], where), run_id)
