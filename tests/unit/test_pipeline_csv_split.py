"""The CSV source splits quote-free chunks by hand; rows, rejects and line
numbers must be exactly what the csv module path gives for the same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datamcp.adapters.pipelines.files import CsvSource

FILES = {
    "crlf_and_blank_lines": "a,b,c\r\n1,2,3\r\n\r\n4,5,6\r\n7,8\r\n9,10,11,12\r\n13,14,15\r\n",
    "quoted_field_across_chunks": 'a,b\n1,2\n3,4\n5,"multi\nline"\n6,7\n8,"x,y"\n9,10\n',
    "semicolons": "a;b\n1;2\n3;4;5\n6;7\n",
    "late_quote": "a,b\n" + "".join(f"{i},{i}\n" for i in range(50)) + '"q",1\n1,2\n',
}


def _drain(source: CsvSource, size: int) -> tuple[list[Any], list[Any]]:
    source._open()
    rows: list[Any] = []
    rejects: list[Any] = []
    while (batch := source.read_blocking(size)) is not None:
        rows += [list(r) for r in batch.rows]
        rejects += batch.rejects
    return rows, rejects


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("size", [1, 2, 1000])
def test_hand_split_matches_the_csv_module(tmp_path: Path, name: str, size: int) -> None:
    path = tmp_path / f"{name}.csv"
    path.write_bytes(FILES[name].encode())
    delimiter = ";" if name == "semicolons" else ","
    fast = CsvSource(path, delimiter=delimiter)
    careful = CsvSource(path, delimiter=delimiter)
    careful._plain = False  # the csv module for every chunk
    assert _drain(fast, size) == _drain(careful, size)
    assert _drain(CsvSource(path, delimiter=delimiter), size)[0]  # rows were read at all
