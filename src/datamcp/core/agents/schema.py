"""JSON Schema checks of task inputs (jsonschema, Draft 2020-12).

Validators are compiled once per schema; a schema that is itself invalid
is refused when the agent registers, not when a task arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from datamcp.core.agents.agent import Capability
from datamcp.core.errors import FieldViolation, InvalidArgument

MAX_VIOLATIONS = 20


class SchemaCache:
    def __init__(self) -> None:
        # Keyed by the capability object (kept in the value, so its id stays
        # its own): a capability's schema never changes after registration.
        self._validators: dict[int, tuple[Capability, Any]] = {}

    def _validator(self, cap: Capability, schema: Mapping[str, Any]) -> Any:
        entry = self._validators.get(id(cap))
        if entry is None or entry[0] is not cap:
            entry = self._validators[id(cap)] = (cap, Draft202012Validator(dict(schema)))
        return entry[1]

    def forget(self, cap: Capability) -> None:
        """Drop the validator of a capability whose agent went away."""
        entry = self._validators.get(id(cap))
        if entry is not None and entry[0] is cap:
            del self._validators[id(cap)]

    def check_schema(self, cap: Capability) -> None:
        """Raises InvalidArgument when the capability's input schema is not a valid schema."""
        if cap.input_schema is None:
            return
        try:
            Draft202012Validator.check_schema(dict(cap.input_schema))
        except SchemaError as exc:
            raise InvalidArgument(
                f"capability {cap.name}: invalid input schema: {exc.message}",
                [FieldViolation(f"capabilities[{cap.name}].input_schema", exc.message)],
            ) from None

    def violations(self, cap: Capability, value: Any, field: str) -> list[FieldViolation]:
        if not cap.input_schema:
            return []
        errors = sorted(
            self._validator(cap, cap.input_schema).iter_errors(value), key=lambda e: list(e.path)
        )
        out = []
        for error in errors[:MAX_VIOLATIONS]:
            path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
            out.append(FieldViolation(f"{field}{path}", error.message))
        return out
