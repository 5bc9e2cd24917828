"""google.protobuf.Value / Struct <-> plain JSON data, fast.

Hand-written because json_format.MessageToDict costs ~40 us per small
message, the largest per-message cost on the publish and task paths.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from datamcp.core.errors import FieldViolation, InvalidArgument

_MAX_SAFE_INT = 2**53
#: Deepest nesting of lists and objects a request's JSON data may have.
MAX_DEPTH = 32


class _Refused(Exception):
    """Data a Value may hold but JSON may not (found again, with its path, by
    :func:`_problem`)."""


def from_value(value: struct_pb2.Value, field: str = "value") -> Any:
    """google.protobuf.Value to plain JSON data. Value numbers are doubles;
    integral ones become ints again, as JSON has no such difference.

    Raises:
        InvalidArgument: NaN or an infinity (not JSON numbers), or nesting
            deeper than :data:`MAX_DEPTH`; the violation names ``field`` and
            the path inside it.
    """
    try:
        return _from(value, 0)
    except _Refused:
        raise _invalid(field, *_problem(value, 0)) from None


def _from(value: struct_pb2.Value, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number - number != 0.0:  # NaN or an infinity
            raise _Refused
        return int(number) if number.is_integer() and abs(number) < _MAX_SAFE_INT else number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        if depth >= MAX_DEPTH:
            raise _Refused
        return {k: _from(v, depth + 1) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        if depth >= MAX_DEPTH:
            raise _Refused
        return [_from(v, depth + 1) for v in value.list_value.values]
    return None


def _problem(value: struct_pb2.Value, depth: int) -> tuple[str, str]:
    """(path, why) of the first part of ``value`` that :func:`_from` refuses."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return "", "NaN and Infinity are not JSON numbers"
    items: list[tuple[str, struct_pb2.Value]] = []
    if kind == "struct_value":
        items = [(f".{k}", v) for k, v in value.struct_value.fields.items()]
    elif kind == "list_value":
        items = [(f"[{i}]", v) for i, v in enumerate(value.list_value.values)]
    if items and depth >= MAX_DEPTH:
        return "", f"nested deeper than {MAX_DEPTH} levels"
    for step, item in items:
        try:
            _from(item, depth + 1)
        except _Refused:
            path, why = _problem(item, depth + 1)
            return step + path, why
    return "", "not JSON data"


def _invalid(field: str, path: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} is not valid JSON data",
        [FieldViolation(f"{field}{path}"[:200], why)],
        reason="INVALID_VALUE",
    )


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


def from_struct(struct: struct_pb2.Struct, field: str = "value") -> dict[str, Any]:
    """google.protobuf.Struct to a dict, checked like :func:`from_value`."""
    try:
        return {k: _from(v, 1) for k, v in struct.fields.items()}
    except _Refused:
        for key, item in struct.fields.items():
            try:
                _from(item, 1)
            except _Refused:
                path, why = _problem(item, 1)
                raise _invalid(field, f".{key}{path}", why) from None
        raise


def to_struct(data: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    for key, item in data.items():
        fill_value(struct.fields[key], item)
    return struct
