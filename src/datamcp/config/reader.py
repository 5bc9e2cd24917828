"""The merged raw values of every setting, and their checks from the field table.

``merge`` layers defaults, the TOML config file, ``DATAMCP_*`` environment
variables and flags; :class:`Reader` hands out each value checked against its
:class:`~datamcp.config.fields.Field` (kind, bounds, choices), recording
problems instead of raising so a bad start reports all of them at once.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from datamcp.config.fields import BY_KEY, FIELDS

T = TypeVar("T")


def merge(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Any],
    env: Mapping[str, str],
    problems: list[str],
) -> dict[str, Any]:
    """Every key's value: default, then file, then environment, then flags."""
    raw: dict[str, Any] = {f.key: f.default for f in FIELDS}
    if path:
        raw.update(_read_config_file(Path(path), problems))
    for f in FIELDS:
        if f.env in env:
            raw[f.key] = _parse_env(f.key, env[f.env], problems)
    for key, value in overrides.items():
        if value is not None:
            raw[key] = value
    return raw


def _read_config_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"config file {path}: not found (check --config / DATAMCP_CONFIG)")
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"config file {path}: cannot be read as TOML: {exc}")
        return {}
    flat: dict[str, Any] = {}
    _flatten(data, "", flat)
    unknown = sorted(k for k in flat if k not in BY_KEY)
    for key in unknown:
        problems.append(f"config file {path}: unknown setting '{key}' (see README, Configuration)")
    return {k: v for k, v in flat.items() if k in BY_KEY}


def _flatten(data: Mapping[str, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in BY_KEY:
            _flatten(value, dotted + ".", out)
        else:
            out[dotted] = value


def _parse_env(key: str, text: str, problems: list[str]) -> Any:
    field_ = BY_KEY[key]
    try:
        if field_.kind == "bool":
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError("expected true or false")
        if field_.kind == "int":
            return int(text)
        if field_.kind == "float":
            return float(text)
        if field_.kind == "json":
            return json.loads(text)
    except ValueError as exc:
        problems.append(f"{field_.env}={text!r}: {exc}")
        return field_.default
    return text


class Reader:
    """Checked access to the merged values that records, rather than raises, problems."""

    def __init__(self, raw: Mapping[str, Any], problems: list[str]) -> None:
        self.raw = raw
        self.problems = problems

    def fail(self, key: str, message: str) -> None:
        field_ = BY_KEY[key]
        where = f"{key} (env {field_.env}" + (f", flag {field_.flag})" if field_.flag else ")")
        self.problems.append(f"{where}: {message}")

    def value(self, key: str) -> Any:
        """``key``'s value checked against its field; its default when invalid.

        Optional strings come back None when unset or empty, ``file`` values
        as paths, strings with choices lower-cased, ``json`` values unchecked
        (their sections check their shape).
        """
        field_, value = BY_KEY[key], self.raw[key]
        if field_.kind in ("int", "float"):
            return self._number(key, value)
        if field_.kind == "bool":
            if not isinstance(value, bool):
                self.fail(key, f"expected true or false, got {value!r}")
                return field_.default
            return value
        if field_.kind == "json":
            return value
        if field_.default is None and (value is None or value == ""):
            return None
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {value!r}")
            return field_.default
        if field_.choices:
            if value.lower() not in field_.choices:
                self.fail(key, f"{value!r} is not one of {', '.join(field_.choices)}")
                return field_.default
            return value.lower()
        if field_.kind == "file":
            path = Path(value).expanduser()
            if not path.is_file():
                self.fail(key, f"file {path} does not exist")
            return path
        return value

    def _number(self, key: str, value: Any) -> Any:
        field_ = BY_KEY[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, got {value!r}")
            return field_.default
        if field_.kind == "int" and not float(value).is_integer():
            self.fail(key, f"expected a whole number, got {value!r}")
            return field_.default
        low, high = field_.minimum, field_.maximum
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            self.fail(key, f"must be {bound}, got {value!r}")
            return field_.default
        return int(value) if field_.kind == "int" else float(value)

    def section(self, cls: type[T], prefix: str, **given: Any) -> T:
        """A ``cls`` (a dataclass) whose fields are the settings ``prefix.<name>``.

        Fields in ``given`` (values shaped or checked by the caller) are taken
        as they are; fields without a setting keep ``cls``'s own default (a
        core policy's fixed parts).
        """
        values = dict(given)
        for f in fields(cls):  # type: ignore[arg-type]
            key = f"{prefix}.{f.name}"
            if f.name not in values and key in BY_KEY:
                values[f.name] = self.value(key)
        return cls(**values)

    def tables(self, key: str) -> tuple[Mapping[str, Any], ...]:
        """A ``json`` value that must be a list of tables."""
        value = self.raw[key]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail(key, "expected a list of tables")
            return ()
        return tuple(value)

    def queue_url(self, key: str) -> str | None:
        """An optional SQS queue URL."""
        value: str | None = self.value(key)
        if value is not None and not value.startswith(("https://", "http://")):
            self.fail(key, "expected an SQS queue URL (https://sqs.<region>...)")
        return value
