"""``datamcp health``: a small client of datamcp.v1.HealthService.

Exit code 0 when the server as a whole is serving, 1 when it is not or
cannot be reached, so the command doubles as a scriptable probe.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc import aio

from datamcp.v1 import health_pb2, health_pb2_grpc

_STATUS = {
    health_pb2.COMPONENT_STATUS_HEALTHY: "HEALTHY",
    health_pb2.COMPONENT_STATUS_DEGRADED: "DEGRADED",
    health_pb2.COMPONENT_STATUS_UNHEALTHY: "UNHEALTHY",
}


def _channel(args: argparse.Namespace) -> aio.Channel:
    if args.tls_ca or args.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(args.tls_ca).read_bytes() if args.tls_ca else None,
            private_key=Path(args.tls_key).read_bytes() if args.tls_key else None,
            certificate_chain=Path(args.tls_cert).read_bytes() if args.tls_cert else None,
        )
        return aio.secure_channel(args.target, credentials)
    return aio.insecure_channel(args.target)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    token = args.token or os.environ.get("DATAMCP_TOKEN")
    key = args.api_key or os.environ.get("DATAMCP_API_KEY")
    if token:
        return [("authorization", f"Bearer {token}")]
    if key:
        return [("authorization", f"ApiKey {key}")]
    return []


def render(report: health_pb2.HealthReport) -> str:
    rows = [("COMPONENT", "STATUS", "LATENCY", "DETAILS")]
    for c in report.components:
        latency = f"{c.check_latency.ToNanoseconds() / 1e6:.1f}ms"
        name = c.name + (" *" if c.critical else "")
        rows.append((name, _STATUS.get(c.status, "?"), latency, c.details))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        f"overall: {_STATUS.get(report.status, '?')}   version {report.version}   "
        f"uptime {report.uptime.ToSeconds()}s"
    ]
    lines += ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    serving = ", ".join(
        f"{k or '(server)'}={'SERVING' if v else 'NOT_SERVING'}"
        for k, v in sorted(report.serving.items())
    )
    lines.append(f"services: {serving}")
    lines.append("(* critical component)")
    return "\n".join(lines)


def _show(report: health_pb2.HealthReport, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(report, indent=None), flush=True)
    else:
        print(render(report), flush=True)


async def run_health_client(args: argparse.Namespace) -> int:
    async with _channel(args) as channel:
        stub = health_pb2_grpc.HealthServiceStub(channel)
        metadata = _metadata(args)
        try:
            if not args.watch:
                response = await stub.GetHealthReport(
                    health_pb2.GetHealthReportRequest(), metadata=metadata, timeout=args.timeout
                )
                _show(response.report, args.json)
                return 0 if response.report.serving.get("", False) else 1
            last: health_pb2.HealthReport | None = None
            async for item in stub.WatchHealth(health_pb2.WatchHealthRequest(), metadata=metadata):
                last = item.report
                _show(item.report, args.json)
            return 0 if last is not None and last.serving.get("", False) else 1
        except aio.AioRpcError as exc:
            print(
                f"datamcp health: {args.target}: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return 1
