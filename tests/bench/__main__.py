"""``python -m tests.bench``: run every benchmark section in order.

Sections are independent: one failing is reported and the rest still run,
and the exit status is 1 if any failed. Add a section by appending it to
``SECTIONS``; it gets the shared :class:`BenchConfig` and writes its own
JSON under ``.bench/``.
"""

from __future__ import annotations

import signal
import sys
import time
import traceback
from types import FrameType

from tests.bench import (
    agents,
    events,
    foundation,
    memory,
    pipelines,
    replicas,
    sdk,
    serverless,
    streams,
)
from tests.bench.common import BenchConfig, Section

SECTIONS: list[Section] = [
    Section(foundation.NAME, foundation.run),
    Section(events.NAME, events.run),
    Section(agents.NAME, agents.run),
    Section(memory.NAME, memory.run),
    Section(pipelines.NAME, pipelines.run),
    Section(streams.NAME, streams.run),
    Section(serverless.NAME, serverless.run),
    Section(sdk.NAME, sdk.run),
    Section(replicas.NAME, replicas.run),
]


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so every ``finally`` stops its subprocesses.

    Python's default SIGTERM action ends the process on the spot, which would
    leave the servers and the load client running after a CI timeout.
    """
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        config = BenchConfig.from_env()
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    failed: list[str] = []
    started = time.monotonic()
    for section in SECTIONS:
        print(f"== {section.name}", flush=True)
        try:
            section.run(config)
        except Exception:
            traceback.print_exc()
            failed.append(section.name)
        print(flush=True)
    elapsed = time.monotonic() - started
    if failed:
        print(f"bench: {len(failed)} section(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"bench: {len(SECTIONS)} section(s) done in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # subprocesses were stopped on the way out
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
