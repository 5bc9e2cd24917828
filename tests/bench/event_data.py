"""The benchmark's events, shared by the gRPC client and the raw SQLite baseline.

Both sides build event ``i`` of a run from the same function, so the server
and the baseline store exactly the same rows: ten fields (nine from the
producer plus the tenant), a JSON payload of about 100 bytes, and a distinct
id and subject per event. Standard library only: the baseline must not pay
for importing gRPC or the mesh.
"""

from __future__ import annotations

import json
from typing import Any

TENANT = "bench"
"""The tenant of the benchmark API key (see ``full_server.write_config``)."""
SOURCE = "/bench/publisher"
THROUGHPUT_TYPE = "bench.order.created"
LATENCY_TYPE = "bench.latency.probe"
DATACONTENTTYPE = "application/json"


def bench_event(run: str, i: int, time_: float) -> dict[str, Any]:
    """The producer's fields of event ``i`` of ``run`` (``data`` as a JSON value)."""
    return {
        "id": f"{run}-{i:08d}",
        "source": SOURCE,
        "type": THROUGHPUT_TYPE,
        "subject": f"orders/{run}-{i:08d}",
        "time": time_,
        "datacontenttype": DATACONTENTTYPE,
        "data": {
            "order": i,
            "sku": f"SKU-{i % 99991:05d}",
            "qty": 1 + i % 7,
            "price": 19.99,
            "currency": "EUR",
            "warehouse": "ams-1",
            "note": "bench",
        },
        "correlation_id": f"corr-{run}-{i // 100:06d}",
        "traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01",
    }


def data_json(data: Any) -> str:
    """``data`` as the server stores it (``datamcp.core.events.model.Event.data_json``)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True)
