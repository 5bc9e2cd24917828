"""Readers feeding CSV and JSON Lines files to a profile a batch of rows at
a time, on a worker thread (memory stays bounded by the distinct-value cap,
not the file size)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from datamcp.core.agents.agent import AgentError, TaskRefused
from datamcp.core.agents.builtin.profile_stats import Column, Profile


class FileReader:
    """Feeds a file to a profile a batch at a time (called on a worker thread)."""

    def __init__(self, path: Path, profile: Profile) -> None:
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


class CsvReader(FileReader):
    def __init__(
        self, path: Path, profile: Profile, delimiter: str, null_values: frozenset[str]
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
            self._header = unique_names(next(self._rows, []))
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
                self.profile.columns.setdefault(name, Column(name))

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


class JsonLinesReader(FileReader):
    def __init__(self, path: Path, profile: Profile, max_line_bytes: int) -> None:
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


def unique_names(header: list[str]) -> list[str]:
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


def format_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return "csv"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    return None
