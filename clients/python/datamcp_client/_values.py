"""google.protobuf.Value / Struct <-> plain JSON data.

The rule for numbers: JSON has one number type and ``Value`` carries it as a
double. A number that is integral and within +-2**53 (where doubles hold
every integer exactly) comes back as ``int``; anything else stays ``float``.
So ``{"a": 1}`` round-trips as ``{"a": 1}``, ``2.5`` stays ``2.5`` and
``1e300`` stays a float. The server applies the same rule to what it reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from google.protobuf import struct_pb2

JSON: TypeAlias = Any
"""Plain JSON data: dict, list, str, int, float, bool or None."""

_MAX_EXACT = 2**53


def from_value(value: struct_pb2.Value) -> JSON:
    """A ``google.protobuf.Value`` as plain JSON data (integral numbers as ``int``)."""
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {k: from_value(v) for k, v in value.struct_value.fields.items()}
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and -_MAX_EXACT < number < _MAX_EXACT:
            return int(number)
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        return [from_value(v) for v in value.list_value.values]
    return None


def from_struct(struct: struct_pb2.Struct) -> dict[str, JSON]:
    """A ``google.protobuf.Struct`` as a plain dict."""
    return {k: from_value(v) for k, v in struct.fields.items()}


def fill_value(target: struct_pb2.Value, data: JSON) -> None:
    """Write plain JSON data into ``target``.

    Raises:
        TypeError: ``data`` holds something JSON cannot (a set, bytes, an object).
    """
    if data is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(data, bool):
        target.bool_value = data
    elif isinstance(data, int | float):
        target.number_value = data
    elif isinstance(data, str):
        target.string_value = data
    elif isinstance(data, Mapping):
        target.struct_value.SetInParent()
        fields = target.struct_value.fields
        for key, item in data.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be strings, got {key!r}")
            fill_value(fields[key], item)
    elif isinstance(data, list | tuple):
        target.list_value.SetInParent()
        values = target.list_value.values
        for item in data:
            fill_value(values.add(), item)
    else:
        raise TypeError(f"{type(data).__name__} is not JSON data")


def to_value(data: JSON) -> struct_pb2.Value:
    """Plain JSON data as a new ``google.protobuf.Value``."""
    value = struct_pb2.Value()
    fill_value(value, data)
    return value


def fill_struct(target: struct_pb2.Struct, data: Mapping[str, JSON]) -> None:
    """Write a plain dict into a ``google.protobuf.Struct``."""
    for key, item in data.items():
        fill_value(target.fields[key], item)
