"""Docs are tests: every runnable example of README.md and docs/*.md runs, in
order, against a fresh server started the README's way (``make run`` with the
quickstart config). See tests/doc_examples.py for what an example block may
contain and the ``doc-test`` directives."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.doc_examples import REPO, Block, blocks, doc_files, script
from tests.support import clean_env

_PLACEHOLDER = re.compile(r"<[a-z][a-z _-]*(?:id|version)>")
# What `make run` needs, mirrored into a scratch directory so the server's
# relative paths (.datamcp, the quickstart's data roots) land there.
_MIRRORED = (
    "Makefile",
    "pyproject.toml",
    "README.md",
    "buf.yaml",
    "buf.gen.yaml",
    "clients",
    "docs",
    "examples",
    "gen",
    "handlers",
    "proto",
    "src",
    ".venv",
)


def _files() -> list[Path]:
    return [p for p in doc_files() if any(b.runnable for b in blocks(p))]


def test_directives_are_well_formed_and_runnable_blocks_have_no_placeholders() -> None:
    for path in doc_files():
        for block in blocks(path):  # raises on a bad directive
            if block.runnable:
                assert not _PLACEHOLDER.search(block.code), (
                    f"{block.where}: a runnable example has a placeholder; take the id "
                    "from an earlier answer, or mark the block doc-test: skip"
                )


class MakeRun:
    """``make run ARGS=...`` in a scratch mirror of the repository."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lines: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                "make",
                "--no-print-directory",
                "run",
                "ARGS=--config examples/quickstart/datamcp.toml --listen 127.0.0.1:0",
            ],
            cwd=root,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(60) or not self.port:
            self.stop()
            raise AssertionError("make run did not serve:\n" + "\n".join(self.lines[-30:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "datamcp serving":
                self.port = int(entry["port"])
                self._ready.set()
        self._ready.set()

    def messages(self) -> list[str]:
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line).get("message", ""))
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # to make, as a supervisor would
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MakeRun]:
    # Install (or confirm) the runtime dependencies in the real checkout first,
    # so the mirror's `make run` finds them up to date.
    subprocess.run(
        ["make", "--no-print-directory", ".venv/.installed-runtime"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    root = tmp_path / "repo"
    root.mkdir()
    for name in _MIRRORED:
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    run = MakeRun(root)
    try:
        yield run
    finally:
        run.stop()
    assert "stopped" in run.messages(), "the server did not stop gracefully on SIGTERM"


@pytest.mark.timeout(400)
@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(REPO)))
def test_examples_run_as_written(path: Path, server: MakeRun, tmp_path: Path) -> None:
    items: list[Block] = blocks(path)
    work = tmp_path / "blocks"
    work.mkdir()
    text = script(items, server.port, work)
    env = clean_env(
        {
            "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "DATAMCP_ADDRESS": f"127.0.0.1:{server.port}",
        }
    )
    done = subprocess.run(
        ["bash", "-c", text],
        cwd=server.root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    if done.returncode != 0:
        markers = [line for line in done.stderr.splitlines() if line.startswith("::doc-test ")]
        where = markers[-1].removeprefix("::doc-test ") if markers else "(before any block)"
        pytest.fail(
            f"the example at {where} failed (exit {done.returncode}):\n"
            f"--- stdout (tail)\n{done.stdout[-3000:]}\n--- stderr (tail)\n{done.stderr[-3000:]}"
        )
