"""Agent, task and audit protobuf <-> core translation."""

from __future__ import annotations

from google.protobuf import struct_pb2, timestamp_pb2

from datamcp.core.agents.agent import Capability
from datamcp.core.agents.model import AuditRecord, Task, TaskSpec
from datamcp.core.agents.registry import AgentSlot
from datamcp.core.agents.remote import Hello
from datamcp.entrypoints.grpc.convert import duration, duration_seconds, timestamp
from datamcp.entrypoints.grpc.values import fill_value, from_struct, from_value, to_struct
from datamcp.v1 import agents_pb2

_STATUS = {
    "ready": agents_pb2.AGENT_STATUS_READY,
    "saturated": agents_pb2.AGENT_STATUS_SATURATED,
    "unhealthy": agents_pb2.AGENT_STATUS_UNHEALTHY,
    "disconnected": agents_pb2.AGENT_STATUS_DISCONNECTED,
}


def spec_from_proto(message: agents_pb2.TaskSpec) -> TaskSpec:
    return TaskSpec(
        capability=message.capability,
        agent_id=message.agent_id,
        input=from_value(message.input, "task.input") if message.HasField("input") else None,
        priority=message.priority,
        timeout=duration_seconds(message.timeout, "task.timeout")
        if message.HasField("timeout")
        else None,
        request_id=message.request_id,
        max_attempts=message.max_attempts,
        correlation_id=message.correlation_id,
    )


def task_to_proto(task: Task, input_value: struct_pb2.Value | None = None) -> agents_pb2.Task:
    """``input_value``: the request's input when ``task.input`` was made from
    it (copied in C instead of rebuilt from ``task.input``)."""
    out = agents_pb2.Task(
        id=task.id,
        capability=task.capability,
        agent_id=task.agent_id,
        priority=task.priority,
        tenant=task.tenant,
        request_id=task.request_id,
        state=int(task.state),  # type: ignore[arg-type]
        attempts=task.attempts,
        max_attempts=task.max_attempts,
        correlation_id=task.correlation_id,
        parent_task_id=task.parent_task_id,
    )
    _set_time(out.deadline, task.deadline)
    _set_time(out.create_time, task.created_at)
    _set_time(out.update_time, task.updated_at)
    if input_value is not None:
        out.input.CopyFrom(input_value)
    else:
        fill_value(out.input, task.input)
    if task.progress or task.progress_message:
        out.progress.percent = task.progress
        out.progress.message = task.progress_message
    if task.state.final and task.error is None:
        fill_value(out.result, task.result)
    if task.error is not None:
        out.error.reason = task.error.reason
        out.error.message = task.error.message
        out.error.retryable = task.error.retryable
    if task.started_at is not None:
        _set_time(out.start_time, task.started_at)
    if task.ended_at is not None:
        _set_time(out.end_time, task.ended_at)
    return out


def _set_time(field: timestamp_pb2.Timestamp, epoch_seconds: float) -> None:
    """``field.CopyFrom(timestamp(epoch_seconds))`` without the extra message."""
    field.seconds, field.nanos = divmod(int(epoch_seconds * 1e9), 1_000_000_000)


def same_input(task: Task, spec: TaskSpec, message: agents_pb2.TaskSpec) -> struct_pb2.Value | None:
    """The request's input Value when the task carries the input made from it."""
    return message.input if task.input is spec.input and message.HasField("input") else None


def capability_to_proto(cap: Capability) -> agents_pb2.Capability:
    out = agents_pb2.Capability(name=cap.name, description=cap.description)
    if cap.input_schema is not None:
        out.input_schema.CopyFrom(to_struct(cap.input_schema))
    if cap.output_schema is not None:
        out.output_schema.CopyFrom(to_struct(cap.output_schema))
    return out


def capability_from_proto(message: agents_pb2.Capability) -> Capability:
    return Capability(
        message.name,
        message.description,
        from_struct(message.input_schema, "input_schema")
        if message.HasField("input_schema")
        else None,
        from_struct(message.output_schema, "output_schema")
        if message.HasField("output_schema")
        else None,
    )


def agent_to_proto(slot: AgentSlot, tenant: str) -> agents_pb2.Agent:
    """The agent as ``tenant`` sees it (its health is per tenant)."""
    d = slot.descriptor
    return agents_pb2.Agent(
        id=d.id,
        name=d.name,
        description=d.description,
        capabilities=[capability_to_proto(c) for c in d.capabilities],
        max_concurrency=d.max_concurrency,
        status=_STATUS[slot.status(tenant)],
        load=slot.in_flight,
        stats=agents_pb2.AgentStats(
            requests=slot.requests,
            errors=slot.errors,
            latency_p50_ms=slot.latency.percentile(0.5),
            latency_p99_ms=slot.latency.percentile(0.99),
        ),
        kind=d.kind,
        weight=d.weight,
    )


def hello_from_proto(message: agents_pb2.ConnectRequest.Hello) -> Hello:
    return Hello(
        name=message.name,
        description=message.description,
        capabilities=[capability_from_proto(c) for c in message.capabilities],
        max_concurrency=message.max_concurrency,
        weight=message.weight or 1,
    )


def audit_to_proto(record: AuditRecord) -> agents_pb2.AuditRecord:
    return agents_pb2.AuditRecord(
        id=record.id,
        source_agent_id=record.source_agent_id,
        target=record.target,
        target_agent_id=record.target_agent_id,
        correlation_id=record.correlation_id,
        task_id=record.task_id,
        parent_task_id=record.parent_task_id,
        depth=record.depth,
        outcome=record.outcome,
        error=record.error,
        start_time=timestamp(record.started_at),
        duration=duration(record.duration),
    )
