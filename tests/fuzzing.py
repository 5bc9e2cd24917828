"""Hostile requests for any RPC, built from its descriptors.

``requests(method)`` is a hypothesis strategy of request messages for a
method descriptor: every field type gets hostile values (control characters
and huge strings, extreme integers, NaN and infinities, Timestamps and
Durations outside their ranges, Structs nested deeply, page tokens made of
hostile JSON), mixed with plausible values (by field name) so that requests
also get past the first checks and reach deeper code. Nothing here knows a
particular RPC: a new RPC or field is covered as soon as it is in a proto.

``check_error`` says what is wrong with an error a server answered, if
anything: INTERNAL / UNKNOWN / DATA_LOSS, UNAVAILABLE (there is no outage
while fuzzing), status details that do not decode, or internals (SQL,
exception class names, stack text) in the text a caller sees.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_status import rpc_status
from hypothesis import strategies as st

from tests.support import rich_details

F = FieldDescriptor

# --- scalars --------------------------------------------------------------------

_CONTROL = "".join(chr(c) for c in (*range(0, 32), 127))
HOSTILE_STRINGS = [
    "",
    "\x00",
    "x\x00t",
    "\r\n",
    "a\tb",
    "\u202e",
    "\ufeff",
    "../../etc/passwd",
    "'; DROP TABLE events; --",
    "%s%n%x",
    "*",
    ".",
    "/",
    "a" * 129,
    "a" * 513,
    "b" * 5_000,
    "c" * 70_000,
    "é" * 3_000,
    "😀" * 2_000,
]

#: Values that pass the first checks of fields with these names, so that
#: requests reach deeper code. Hostile values are mixed in for every field.
PLAUSIBLE: dict[str, list[str]] = {
    "type": ["a.b", "task.created", "memory.put", "fuzz.event"],
    "types": ["*", "a.*", "task.*", "a.b"],
    "source": ["/s", "/fuzz", "/memory/primary"],
    "subject": ["s", "k-1"],
    "capability": ["echo", "profile.rows", "memory.get", "memory.put"],
    "target": ["echo", "memory.get"],
    "namespace": ["a", "a/b", "fuzz"],
    "namespace_prefix": ["", "a", "a/b"],
    "key": ["k", "k-1"],
    "subscription": ["s1", "fuzz"],
    "name": ["fuzz", "n1", "echo"],
    "store": ["", "primary"],
    "stores": ["primary"],
    "tie_break": ["", "timestamp_wins", "manual"],
    "service": ["", "datamcp.v1.EventService", "datamcp.v1.HealthService"],
    "event_time_field": ["ts", "t"],
    "key_fields": ["sensor", "k"],
    "field": ["v", "a.b"],
    "file_containing": ["datamcp/v1/events.proto"],
    "list_services": ["*"],
    "spec_text": [
        "name: fuzz\nsource: {csv: {path: in.csv}}\ndestination: {jsonl: {path: out.jsonl}}\n",
        '{"name": "fuzz"}',
        "- [",
    ],
}


def strings(name: str) -> st.SearchStrategy[str]:
    hostile = st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.text(alphabet=st.sampled_from(_CONTROL + "ab.-/_*é"), max_size=12),
        st.text(max_size=24),
    )
    plausible = PLAUSIBLE.get(name)
    if plausible is None:
        return hostile
    return st.one_of(st.sampled_from(plausible), hostile)


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = sorted(
        {lo, hi, 0, 1, min(hi, 2**31 - 1), min(hi, 1000), min(hi, 1001)}
        | ({-1, lo + 1} if signed else set())
    )
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -100), min(hi, 100)))


FLOATS = st.one_of(
    st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 2.0**63, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    F.TYPE_INT32: _ints(32, True),
    F.TYPE_SINT32: _ints(32, True),
    F.TYPE_SFIXED32: _ints(32, True),
    F.TYPE_INT64: _ints(64, True),
    F.TYPE_SINT64: _ints(64, True),
    F.TYPE_SFIXED64: _ints(64, True),
    F.TYPE_UINT32: _ints(32, False),
    F.TYPE_FIXED32: _ints(32, False),
    F.TYPE_UINT64: _ints(64, False),
    F.TYPE_FIXED64: _ints(64, False),
    F.TYPE_DOUBLE: FLOATS,
    F.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_BYTES: st.binary(max_size=64),
}

# --- well-known types -----------------------------------------------------------

TS_MIN, TS_MAX = -62_135_596_800, 253_402_300_799
DURATION_MAX = 315_576_000_000
_NANOS = st.one_of(
    st.integers(0, 999_999_999),
    st.sampled_from([-1, -999_999_999, 1_000_000_000, 2**31 - 1, -(2**31)]),
)

TIMESTAMP_SECONDS = st.one_of(
    st.integers(0, 4_102_444_800),  # 1970 .. 2100
    st.integers(TS_MIN, TS_MAX),
    st.sampled_from([TS_MIN - 1, TS_MAX + 1, 10**15, -(10**15), 2**63 - 1, -(2**63)]),
)
DURATION_SECONDS = st.one_of(
    st.integers(-100, 100_000),
    st.integers(-DURATION_MAX, DURATION_MAX),
    st.sampled_from(
        [310_000_000_000, DURATION_MAX, DURATION_MAX + 1, -DURATION_MAX - 1, 2**63 - 1, -(2**63)]
    ),
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        FLOATS,
        st.integers(-(2**70), 2**70).map(float),
        strings(""),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(strings(""), inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def _fill(target: Message, data: Any) -> None:
    """JSON-ish data into a google.protobuf.Value, NaN and infinities included."""
    if data is None:
        target.null_value = 0  # type: ignore[attr-defined]
    elif isinstance(data, bool):
        target.bool_value = data  # type: ignore[attr-defined]
    elif isinstance(data, float):
        target.number_value = data  # type: ignore[attr-defined]
    elif isinstance(data, str):
        target.string_value = data  # type: ignore[attr-defined]
    elif isinstance(data, list):
        target.list_value.SetInParent()  # type: ignore[attr-defined]
        for item in data:
            _fill(target.list_value.values.add(), item)  # type: ignore[attr-defined]
    else:
        target.struct_value.SetInParent()  # type: ignore[attr-defined]
        for key, item in data.items():
            _fill(target.struct_value.fields[key], item)  # type: ignore[attr-defined]


def _nested(depth: int, kind: str) -> Any:
    data: Any = 1.0
    for _ in range(depth):
        data = [data] if kind == "list" else {"a": data}
    return data


#: Plain JSON-ish data, or nesting as deep as the protobuf parser still takes
#: (100 messages: a list level is 2 of them, an object level 3).
VALUE_DATA = st.one_of(
    json_values(),
    st.builds(_nested, st.integers(20, 44), st.just("list")),
    st.builds(_nested, st.integers(10, 29), st.just("struct")),
)


def _value(data: Any, cls: type[Message]) -> Message:
    out = cls()
    _fill(out, data)
    return out


def _token(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


#: Page tokens: hostile JSON inside valid base64, and garbage.
PAGE_TOKENS = st.one_of(
    st.sampled_from(
        [
            base64.urlsafe_b64encode(b"[" * 50_000 + b"]" * 50_000).decode(),
            base64.urlsafe_b64encode(b'{"a":' * 3_000 + b"1" + b"}" * 3_000).decode(),
            base64.urlsafe_b64encode(b"NaN").decode(),
            base64.urlsafe_b64encode(b'[1e400, "x"]').decode(),
            base64.urlsafe_b64encode(b'[-Infinity, "x"]').decode(),
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
            _token(10**40),
            _token(-1),
            _token(2**63),
            _token([1.5e300, "x"]),
            _token([-1e30, "x\x00y"]),
            _token(["a\x00", "b"]),
            _token("x" * 20_000),
            _token("s\x00"),
            _token({"a": 1}),
            _token([[1], [2]]),
            "!!!not base64!!!",
            "AAAA" * 5_000,
        ]
    ),
    st.builds(_token, json_values(6)),
    strings(""),
)


def _timestamps(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), TIMESTAMP_SECONDS, _NANOS)


def _durations(cls: type[Message]) -> st.SearchStrategy[Message]:
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), DURATION_SECONDS, _NANOS)


def _well_known(desc: descriptor.Descriptor) -> st.SearchStrategy[Message] | None:
    cls = message_factory.GetMessageClass(desc)
    name = desc.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamps(cls)
    if name == "google.protobuf.Duration":
        return _durations(cls)
    if name == "google.protobuf.Value":
        return VALUE_DATA.map(lambda d: _value(d, cls))
    if name == "google.protobuf.Struct":
        value_cls = message_factory.GetMessageClass(desc.fields_by_name["fields"].message_type)
        del value_cls
        return st.dictionaries(strings(""), VALUE_DATA, max_size=3).map(lambda d: _struct(cls, d))
    if name == "google.protobuf.ListValue":
        return st.lists(VALUE_DATA, max_size=3).map(lambda items: _list_value(cls, items))
    return None


def _struct(cls: type[Message], data: dict[str, Any]) -> Message:
    out = cls()
    for key, item in data.items():
        _fill(out.fields[key], item)  # type: ignore[attr-defined]
    return out


def _list_value(cls: type[Message], items: list[Any]) -> Message:
    out = cls()
    for item in items:
        _fill(out.values.add(), item)  # type: ignore[attr-defined]
    return out


# --- messages -------------------------------------------------------------------

MAX_DEPTH = 4


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == F.TYPE_STRING:
        if field.name.endswith("page_token"):
            return PAGE_TOKENS
        return strings(field.name)
    if field.type == F.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.sampled_from(sorted({*known, -1, 99, 2**31 - 1}))
    return _SCALARS[field.type]


def _is_map(field: FieldDescriptor) -> bool:
    return (
        field.type == F.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
        and _is_repeated(field)
    )


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@st.composite
def _message(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int) -> Message:
    cls = message_factory.GetMessageClass(desc)
    out = cls()
    if depth > MAX_DEPTH:
        return out
    chosen = {oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in desc.oneofs}
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and chosen[oneof.name] is not field:
            continue
        if oneof is None and not draw(st.booleans()):
            continue
        if _is_map(field):
            entry = field.message_type
            keys = _field_values(entry.fields_by_name["key"], depth)
            values = _field_values(entry.fields_by_name["value"], depth)
            for key, value in draw(st.dictionaries(keys, values, max_size=3)).items():
                target = getattr(out, field.name)
                if entry.fields_by_name["value"].type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif _is_repeated(field):
            items = draw(
                st.one_of(
                    st.lists(_field_values(field, depth), max_size=3),
                    # past any batch limit
                    _field_values(field, depth).map(lambda item: [item] * 1001),
                )
                if field.type != F.TYPE_MESSAGE
                else st.lists(_field_values(field, depth), max_size=3)
            )
            target = getattr(out, field.name)
            if field.type == F.TYPE_MESSAGE:
                for item in items:
                    target.add().CopyFrom(item)
            else:
                target.extend(items)
        elif field.type == F.TYPE_MESSAGE:
            getattr(out, field.name).CopyFrom(draw(_field_values(field, depth)))
        else:
            setattr(out, field.name, draw(_field_values(field, depth)))
    return out


_CACHE: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Hostile instances of the message ``desc`` (well-known types included)."""
    key = (desc.full_name, depth)
    if key not in _CACHE:
        special = _well_known(desc)
        _CACHE[key] = special if special is not None else st.deferred(lambda: _message(desc, depth))
    return _CACHE[key]


def requests(method: descriptor.MethodDescriptor) -> st.SearchStrategy[Message]:
    return messages(method.input_type)


def request_class(method: descriptor.MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)  # type: ignore[no-any-return]


# --- what an error may not be ---------------------------------------------------

#: Text that only internals produce: SQL statements and driver wrappers,
#: exception class names, stack traces, Python reprs of exceptions.
INTERNALS = re.compile(
    r"Traceback \(most recent call last\)"
    r"|File \"[^\"]+\", line \d+"
    r"|\[SQL: |\[parameters: |sqlalche\.me|\(Background on this error"
    r"|\b(?:sqlite3|asyncpg|aiosqlite|psycopg2?|sqlalchemy)\."
    r"|\b(?:SELECT\b[^.]{0,200}\bFROM|INSERT INTO|UPDATE \w+ SET|DELETE FROM|ON CONFLICT)\b"
    r"|\b(?:[A-Z][a-z0-9]+)+(?:Error|Exception)\b"
    r"|\b(?:KeyError|StopIteration|RecursionError|CancelledError)\b"
)

#: Codes a hostile request may never produce from a healthy server.
FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNAVAILABLE,
}


def caller_text(error: grpc.RpcError) -> list[str]:
    """Every piece of text the caller sees in an error: the message and the
    strings inside the google.rpc.Status details.

    Raises:
        ValueError: the details do not decode or disagree with the status.
    """
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    texts = [error.details() or ""]  # type: ignore[attr-defined]
    if status is not None:
        texts.append(status.message)
    texts.extend(str(message) for message in rich_details(error).values())
    return texts


def check_error(error: grpc.RpcError) -> str | None:
    """What is wrong with an error answer (None: nothing)."""
    code = error.code()  # type: ignore[attr-defined]
    if code in FORBIDDEN:
        return f"{code.name}: {(error.details() or '')[:300]!r}"  # type: ignore[attr-defined]
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in (error.details() or ""):  # type: ignore[attr-defined]
        return f"error trailers too large: {error.details()[:300]!r}"  # type: ignore[attr-defined]
    try:
        texts = caller_text(error)
    except ValueError as exc:
        return f"status details do not decode: {exc}"
    for text in texts:
        found = INTERNALS.search(text)
        if found is not None:
            return f"internals in error text ({found.group(0)!r}): {text[:300]!r}"
    return None
