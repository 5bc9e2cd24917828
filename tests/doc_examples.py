"""The shell, grpcurl, CLI and SDK examples of README.md and docs/*.md, as tests.

What the runner expects of an example block (tell this to anyone writing docs):

- Fenced blocks tagged ``sh``, ``bash``, ``shell`` or ``python`` are run;
  ``toml``, ``yaml``, ``json`` and untagged blocks are data and are not.
- The blocks of one file run in order in one bash session (``set -euo
  pipefail``, variables carry over, so a later block can use ``$TASK`` set by
  an earlier one), from the repository root, with ``.venv/bin`` first on
  PATH, against a fresh server started the README's way: ``make run
  ARGS="--config examples/quickstart/datamcp.toml"`` (only the port differs:
  ``localhost:50051`` / ``127.0.0.1:50051`` in a block are rewritten to it,
  and ``DATAMCP_ADDRESS`` points the CLI at it). No placeholders such as
  ``<task id>``: take ids from earlier answers (``jq``, ``--quiet``).
- A directive in an HTML comment on the line just before a block changes how
  it runs:

  - ``<!-- doc-test: skip REASON -->``: not run (the reason is required);
  - ``<!-- doc-test: stream -->``: a stream that runs until stopped; it is
    interrupted (SIGINT) after a few seconds and passes when it printed
    something and did not fail before;
  - ``<!-- doc-test: exit N -->``: passes when it exits with status N.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python"}
_FENCE = re.compile(r"^```([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):50051\b")


@dataclass(frozen=True, slots=True)
class Block:
    path: Path
    line: int
    lang: str  # "sh", "python" or the tag of a data block
    code: str
    mode: str  # "run", "skip", "stream" or "exit"
    arg: str  # skip reason or expected exit status

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE.values() and self.mode != "skip"


class DocError(ValueError):
    """A block or directive the runner cannot take."""


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file with its directive."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        tag = fence.group(1).lower()
        mode, arg = "run", ""
        if start > 0 and (d := _DIRECTIVE.match(lines[start - 1])):
            mode, arg = d.group(1), d.group(2)
            if mode not in ("skip", "stream", "exit"):
                raise DocError(f"{path}:{start}: unknown doc-test directive {mode!r}")
            if mode == "skip" and not arg:
                raise DocError(f"{path}:{start}: doc-test skip needs a reason")
            if mode == "exit" and not arg.isdigit():
                raise DocError(f"{path}:{start}: doc-test exit needs a status number")
        found.append(Block(path, start + 1, RUNNABLE.get(tag, tag), "\n".join(body), mode, arg))
    return found


def script(items: list[Block], port: int, work: Path, stream_seconds: float = 4.0) -> str:
    """One bash script running a file's blocks in order."""
    out = [
        "set -euo pipefail -a",  # -a: variables reach the child shells of stream/exit blocks
        "__stream() {",
        "  local out rc; out=$(mktemp)",
        f'  set +e; timeout -s INT -k 5 {stream_seconds} "$@" >"$out" 2>&1; rc=$?; set -e',
        '  cat "$out"',
        '  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then',
        '    echo "stream failed: exit $rc" >&2; return 1',
        "  fi",
        '  if [ ! -s "$out" ]; then echo "stream printed nothing" >&2; return 1; fi',
        "}",
        "__exit() {",
        "  local want=$1 rc; shift",
        '  set +e; "$@"; rc=$?; set -e',
        '  if [ "$rc" -ne "$want" ]; then echo "expected exit $want, got $rc" >&2; return 1; fi',
        "}",
    ]
    for n, block in enumerate(items):
        if not block.runnable:
            continue
        code = _ADDRESS.sub(f"127.0.0.1:{port}", block.code)
        suffix = ".py" if block.lang == "python" else ".sh"
        file = work / f"block{n}{suffix}"
        file.write_text(code + "\n", encoding="utf-8")
        out.append(f"echo '::doc-test {block.where}' >&2")
        runner = f"python {file}" if block.lang == "python" else f"bash -euo pipefail {file}"
        if block.mode == "stream":
            out.append(f"__stream {runner} </dev/null")
        elif block.mode == "exit":
            out.append(f"__exit {block.arg} {runner} </dev/null")
        elif block.lang == "python":
            out.append(f"{runner} </dev/null")
        else:
            out.append(f"source {file} </dev/null")
    return "\n".join(out) + "\n"
