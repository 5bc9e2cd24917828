"""No NUL in the text of a request.

No store takes NUL in text (PostgreSQL refuses it) and no name, id or path
has one, so the entry refuses it for every RPC, before any service sees it:
INVALID_ARGUMENT naming the field (``event.id``, ``entries[2].key``). JSON
data (Struct, Value) may hold it: JSON escapes it when stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from datamcp.core.errors import FieldViolation, InvalidArgument

_STRING = FieldDescriptor.TYPE_STRING
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
NulCheck = Callable[[Message, str], str | None]
_CHECKS: dict[str, NulCheck] = {}


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first text field holding a NUL character, if any.
    The check of each message type is built once: a few attribute reads per
    call, not a walk of descriptors."""
    desc: Any = message.DESCRIPTOR
    return _check_for(desc)(message, prefix)


def _check_for(desc: Descriptor) -> NulCheck:
    check = _CHECKS.get(desc.full_name)
    if check is None:
        _CHECKS[desc.full_name] = _deferred(desc)  # recursive types
        check = _CHECKS[desc.full_name] = _build(desc)
    return check


def _deferred(desc: Descriptor) -> NulCheck:
    def check(message: Message, prefix: str) -> str | None:
        return _CHECKS[desc.full_name](message, prefix)

    return check


def _build(desc: Descriptor) -> NulCheck:
    texts = [f.name for f in desc.fields if f.type == _STRING and not f.is_repeated]
    lists = [f.name for f in desc.fields if f.type == _STRING and f.is_repeated]
    maps: list[tuple[str, NulCheck | None]] = []
    singles: list[tuple[str, NulCheck]] = []
    repeats: list[tuple[str, NulCheck]] = []
    for f in desc.fields:
        kind = f.message_type
        if f.type != _MESSAGE or kind is None or kind.file.package == "google.protobuf":
            continue
        if kind.GetOptions().map_entry:
            value = kind.fields_by_name["value"]
            held = value.message_type
            if value.type == _STRING:
                maps.append((f.name, None))
            elif held is not None and held.file.package != "google.protobuf":
                maps.append((f.name, _check_for(held)))
            elif kind.fields_by_name["key"].type == _STRING:
                maps.append((f.name, _no_check))
        elif f.is_repeated:
            repeats.append((f.name, _check_for(kind)))
        else:
            singles.append((f.name, _check_for(kind)))

    def check(message: Message, prefix: str) -> str | None:
        for name in texts:
            if "\x00" in getattr(message, name):
                return prefix + name
        for name in lists:
            if any("\x00" in item for item in getattr(message, name)):
                return prefix + name
        for name, nested in singles:
            if message.HasField(name) and (
                found := nested(getattr(message, name), f"{prefix}{name}.")
            ):
                return found
        for name, nested in repeats:
            for i, item in enumerate(getattr(message, name)):
                if found := nested(item, f"{prefix}{name}[{i}]."):
                    return found
        for name, values in maps:
            for key, item in getattr(message, name).items():
                where = f"{prefix}{name}[{key!r}]"[:200]
                if isinstance(key, str) and "\x00" in key:
                    return where
                if values is None:
                    if "\x00" in item:
                        return where
                elif found := values(item, f"{where}."):
                    return found
        return None

    return check


def _no_check(message: Message, prefix: str) -> str | None:
    return None


def refuse_nul(request: Any) -> Any:
    """``request``, or InvalidArgument naming its first text field with a NUL."""
    found = nul_field(request) if isinstance(request, Message) else None
    if found is not None:
        raise InvalidArgument(
            "a text field holds a NUL character",
            [FieldViolation(found, "must not contain NUL (\\x00) characters")],
            reason="INVALID_CHARACTERS",
        )
    return request
