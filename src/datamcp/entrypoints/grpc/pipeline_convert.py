"""Pipeline, run and reject protobuf <-> core translation.

The protobuf spec maps onto the same plain-data form YAML/JSON specs are
parsed from, so one validator (``core.pipelines.spec``) serves both; field
paths in problems read the same either way.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.pipelines.model import Pipeline, PipelineSpec, Reject, Run
from datamcp.core.pipelines.service import Definition
from datamcp.entrypoints.grpc.convert import timestamp
from datamcp.entrypoints.grpc.values import fill_value, to_struct
from datamcp.v1 import pipelines_pb2 as pb

_MODES = {
    "WRITE_MODE_APPEND": "append",
    "WRITE_MODE_REPLACE": "replace",
    "WRITE_MODE_MERGE": "merge",
}
_CONTRACTS = {"SCHEMA_CONTRACT_EVOLVE": "evolve", "SCHEMA_CONTRACT_FREEZE": "freeze"}
_MODES_BACK = {v: k for k, v in _MODES.items()}
_CONTRACTS_BACK = {v: k for k, v in _CONTRACTS.items()}


def _ints(value: Any) -> Any:
    """Struct numbers are doubles; whole ones become ints again."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


_MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's own range


def _seconds(duration: Any, field: str) -> float:
    """A Duration as seconds, refusing what the Duration type itself does not
    allow (out of range, seconds and nanos of opposite signs)."""
    s, n = duration.seconds, duration.nanos
    if (
        abs(s) > _MAX_DURATION_SECONDS
        or abs(n) >= 1_000_000_000
        or (s and n and (s > 0) != (n > 0))
    ):
        raise InvalidArgument(
            f"invalid {field}",
            [FieldViolation(field, "not a valid google.protobuf.Duration")],
            reason="INVALID_PIPELINE",
        )
    return float(s + n / 1e9)


def spec_to_data(message: pb.PipelineSpec) -> dict[str, Any]:
    timeout = _seconds(message.timeout, "spec.timeout") if message.HasField("timeout") else None
    probe = pb.PipelineSpec()
    probe.CopyFrom(message)
    probe.ClearField("timeout")
    try:
        data: dict[str, Any] = json_format.MessageToDict(probe, preserving_proto_field_name=True)
    except (json_format.Error, ValueError):  # NaN/Infinity in a Struct, ...
        raise InvalidArgument(
            "invalid spec",
            [FieldViolation("spec", "values must be JSON: no NaN or Infinity")],
            reason="INVALID_PIPELINE",
        ) from None
    data = _ints(data)
    if timeout is not None:
        data["timeout"] = timeout
    for key in ("max_rejects",):
        if key in data:
            data[key] = int(data[key])
    source_p = data.get("source", {}).get("http", {}).get("pagination")
    if isinstance(source_p, dict) and "start" in source_p:
        source_p["start"] = int(source_p["start"])
    table = data.get("destination", {}).get("table")
    if isinstance(table, dict):
        if "mode" in table:
            table["mode"] = _MODES.get(table["mode"], "append")
        if "contract" in table:
            table["contract"] = _CONTRACTS.get(table["contract"], "evolve")
    return data


def definition_from(message: Any) -> Definition:
    """The definition oneof of a create/update/validate request."""
    which = message.WhichOneof("definition")
    if which == "spec_text":
        return Definition(text=message.spec_text or " ")
    if which == "spec":
        return Definition(spec=spec_to_data(message.spec))
    return Definition()


def spec_to_proto(spec: PipelineSpec) -> pb.PipelineSpec:
    data = spec.to_dict()
    table = data["destination"].get("table")
    if table is not None:
        table["mode"] = _MODES_BACK[table["mode"]]
        table["contract"] = _CONTRACTS_BACK[table["contract"]]
    if "timeout" in data:
        data["timeout"] = f"{data['timeout']:.9f}s"
    out = pb.PipelineSpec()
    json_format.ParseDict(data, out)
    return out


def pipeline_to_proto(p: Pipeline) -> pb.Pipeline:
    out = pb.Pipeline(
        id=p.id,
        name=p.name,
        description=p.description,
        spec=spec_to_proto(p.spec),
        version=p.version,
        tenant=p.tenant,
        create_time=timestamp(p.created_at),
        update_time=timestamp(p.updated_at),
    )
    if p.cursor is not None:
        fill_value(out.cursor, p.cursor)
    if p.next_fire_at is not None:
        out.next_run_time.CopyFrom(timestamp(p.next_fire_at))
    return out


def run_to_proto(run: Run) -> pb.Run:
    out = pb.Run(
        id=run.id,
        pipeline_id=run.pipeline_id,
        pipeline_name=run.pipeline_name,
        pipeline_version=run.pipeline_version,
        tenant=run.tenant,
        state=int(run.state),  # type: ignore[arg-type]
        trigger=run.trigger,
        params=to_struct(run.params),
        request_id=run.request_id,
        correlation_id=run.correlation_id,
        stages=[
            pb.StageCounters(stage=s.stage, read=s.read, written=s.written, rejected=s.rejected)
            for s in run.stages
        ],
        rows_read=run.rows_read,
        rows_written=run.rows_written,
        rows_rejected=run.rows_rejected,
        attempts=run.attempts,
        create_time=timestamp(run.created_at),
        update_time=timestamp(run.updated_at),
    )
    if run.error is not None:
        out.error.reason = run.error.reason
        out.error.message = run.error.message
    if run.cursor_start is not None:
        fill_value(out.cursor_start, run.cursor_start)
    if run.cursor_end is not None:
        fill_value(out.cursor_end, run.cursor_end)
    if run.started_at is not None:
        out.start_time.CopyFrom(timestamp(run.started_at))
    if run.ended_at is not None:
        out.end_time.CopyFrom(timestamp(run.ended_at))
    return out


def reject_to_proto(r: Reject) -> pb.Reject:
    return pb.Reject(stage=r.stage, reason=r.reason, row=to_struct(r.row), row_number=r.row_number)
