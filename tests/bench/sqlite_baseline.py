"""The baseline for durable publish: the same rows, straight into SQLite.

``run_sqlite_baseline`` (called by the benchmark) starts ``python -m
tests.bench.sqlite_baseline``, which creates the server's ``events`` table
(the DDL migration 0002 produces on SQLite: same columns, unique constraint
and indexes) in a fresh database, sets the pragmas the server's engine sets
(WAL, ``synchronous=NORMAL``), inserts the warm-up rows and then the measured
rows with ``executemany``, one transaction per batch, and prints one JSON
line with the result.

This is the floor under the server's cost: no RPC, no validation, no
duplicate check, no ORM. The rows are built before the clock starts, except
``stored_at``, which is the commit time of each batch as on the server.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.bench.event_data import TENANT, bench_event, data_json
from tests.bench.procs import REPO_ROOT

SCHEMA = """
CREATE TABLE events (
    seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    tenant VARCHAR(128) NOT NULL,
    id VARCHAR(128) NOT NULL,
    source VARCHAR(512) NOT NULL,
    type VARCHAR(256) NOT NULL,
    subject VARCHAR(512) NOT NULL,
    time FLOAT NOT NULL,
    datacontenttype VARCHAR(128) NOT NULL,
    data TEXT NOT NULL,
    correlation_id VARCHAR(128) NOT NULL,
    traceparent VARCHAR(128) NOT NULL,
    stored_at FLOAT NOT NULL,
    CONSTRAINT uq_events_tenant_id UNIQUE (tenant, id)
);
CREATE INDEX ix_events_tenant_seq ON events (tenant, seq);
CREATE INDEX ix_events_stored_at ON events (stored_at);
"""
"""As ``datamcp serve`` creates it (read back from a server's database with ``.schema``)."""

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)
"""What ``datamcp.adapters.sqlalchemy.engine`` sets on every SQLite connection."""

INSERT = (
    "INSERT INTO events (tenant, id, source, type, subject, time, datacontenttype, data,"
    " correlation_id, traceparent, stored_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
TIMEOUT = 20.0
"""Seconds the baseline subprocess gets; it normally needs one or two."""


@dataclass(frozen=True, slots=True)
class BaselineResult:
    """Outcome of the raw insert run; ``events`` and the rate cover the measured rows."""

    events: int
    seconds: float
    events_per_s: float
    transactions: int
    rows_in_table: int


def _row(run: str, i: int, now: float) -> tuple[Any, ...]:
    e = bench_event(run, i, now)
    return (
        TENANT,
        e["id"],
        e["source"],
        e["type"],
        e["subject"],
        e["time"],
        e["datacontenttype"],
        data_json(e["data"]),
        e["correlation_id"],
        e["traceparent"],
    )


def insert_rows(db: Path, *, events: int, batch: int, warmup: int) -> BaselineResult:
    """Create the table in a new database at ``db`` and time the inserts."""
    db.parent.mkdir(parents=True, exist_ok=True)
    run = "raw" + time.strftime("%H%M%S")
    now = time.time()
    rows = [_row(run, i, now) for i in range(warmup + events)]
    conn = sqlite3.connect(db, isolation_level=None)  # explicit BEGIN/COMMIT below
    try:
        for pragma in PRAGMAS:
            conn.execute(pragma)
        conn.executescript(SCHEMA)

        def commit_batches(part: Sequence[tuple[Any, ...]]) -> int:
            transactions = 0
            for start in range(0, len(part), batch):
                stored_at = time.time()
                conn.execute("BEGIN")
                conn.executemany(INSERT, [(*r, stored_at) for r in part[start : start + batch]])
                conn.execute("COMMIT")
                transactions += 1
            return transactions

        commit_batches(rows[:warmup])
        began = time.perf_counter()
        transactions = commit_batches(rows[warmup:])
        elapsed = time.perf_counter() - began
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
    finally:
        conn.close()
    return BaselineResult(
        events=events,
        seconds=round(elapsed, 4),
        events_per_s=round(events / elapsed, 1) if elapsed > 0 else 0.0,
        transactions=transactions,
        rows_in_table=int(count),
    )


def run_sqlite_baseline(db: Path, *, events: int, batch: int, warmup: int) -> BaselineResult:
    """Run :func:`insert_rows` in a subprocess (a process of its own, like the server).

    Raises:
        RuntimeError: the subprocess failed, timed out or printed no result.
    """
    argv = [
        sys.executable,
        "-m",
        "tests.bench.sqlite_baseline",
        f"--db={db}",
        f"--events={events}",
        f"--batch={batch}",
        f"--warmup={warmup}",
    ]
    try:
        done = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has already killed the child
        raise RuntimeError(f"raw sqlite baseline timed out after {exc.timeout}s") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"raw sqlite baseline failed (exit {done.returncode}):\n{done.stderr}")
    return BaselineResult(**json.loads(lines[-1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="new database file")
    parser.add_argument("--events", type=int, required=True, help="measured rows")
    parser.add_argument("--batch", type=int, required=True, help="rows per transaction")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured rows first")
    args = parser.parse_args(argv)
    if args.db.exists():
        parser.error(f"{args.db} exists; the baseline needs a new database")
    result = insert_rows(args.db, events=args.events, batch=args.batch, warmup=args.warmup)
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
