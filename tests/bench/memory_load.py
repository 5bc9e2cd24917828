"""Closed-loop ``MemorySyncService/Put`` load from a separate client process.

Prints one JSON line (a :class:`LoadResult`). Each caller writes the same
small JSON value to a key of its own, so the server does a full write (read,
history, upsert, change sequence) on every call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from datamcp.entrypoints.grpc.values import to_value
from datamcp.v1 import memory_pb2
from tests.bench.common import API_KEY_ENV, freeze_client_heap
from tests.bench.load import CallSpec, generate_load

PUT = "/datamcp.v1.MemorySyncService/Put"


def _probe(raw: bytes) -> None:
    record = memory_pb2.PutResponse.FromString(raw).record
    if not record.version or record.key != "bench-key":
        raise RuntimeError(f"Put answered without a stored record: {record}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV)
    metadata = (("authorization", f"ApiKey {api_key}"),) if api_key else ()
    freeze_client_heap()
    request = memory_pb2.PutRequest(
        namespace="bench/put", key="bench-key", value=to_value({"text": "context", "n": 1})
    ).SerializeToString()
    result = asyncio.run(
        generate_load(
            args.target,
            seconds=args.seconds,
            warmup=args.warmup,
            concurrency=args.concurrency,
            channels=1,
            metadata=metadata,
            call=CallSpec(PUT, request, _probe),
        )
    )
    print(result.to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
