"""google.protobuf.Value / Struct <-> plain JSON data, fast.

Hand-written because json_format.MessageToDict costs ~40 us per small
message, the largest per-message cost on the publish and task paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

_MAX_SAFE_INT = 2**53


def from_value(value: struct_pb2.Value) -> Any:
    """google.protobuf.Value to plain JSON data. Value numbers are doubles;
    integral ones become ints again, as JSON has no such difference."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() and abs(number) < _MAX_SAFE_INT else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: from_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [from_value(v) for v in value.list_value.values]
    return None


def fill_value(target: struct_pb2.Value, data: Any) -> None:
    """Plain JSON data into a google.protobuf.Value (the inverse, as fast)."""
    if data is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        target.bool_value = data
    elif isinstance(data, int | float):
        target.number_value = data
    elif isinstance(data, str):
        target.string_value = data
    elif isinstance(data, dict):
        fields = target.struct_value.fields
        target.struct_value.SetInParent()
        for key, item in data.items():
            fill_value(fields[key], item)
    elif isinstance(data, list):
        target.list_value.SetInParent()
        values = target.list_value.values
        for item in data:
            fill_value(values.add(), item)
    else:
        json_format.ParseDict(data, target)


def to_value(data: Any) -> struct_pb2.Value:
    value = struct_pb2.Value()
    fill_value(value, data)
    return value


def from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {k: from_value(v) for k, v in struct.fields.items()}


def to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    for key, item in data.items():
        fill_value(struct.fields[key], item)
    return struct
