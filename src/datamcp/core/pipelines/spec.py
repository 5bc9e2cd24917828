"""The pipeline spec: parsed from YAML/JSON (or the protobuf's dict form),
validated with field-level problems, normalized to one canonical dict.

The canonical form is what is stored and returned: ``{"source": {kind:
options}, "transforms": [{kind: options}, ...], "destination": {kind:
options}, ...}`` with every option spelled out. Checks that need the
server's configuration (data roots, connection names, APIs) are done by the
connectors (:class:`~datamcp.core.pipelines.ports.Connectors.check`); checks
that need the source's columns are done when a run (or preview) binds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from croniter import croniter

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.pipelines import kinds
from datamcp.core.pipelines.checker import Checker
from datamcp.core.pipelines.limits import (
    MAX_SPEC_TEXT,
    json_problems,
    timeout_problem,
)
from datamcp.core.pipelines.model import Document, Part, PipelineSpec

NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,127}$")
MAX_BATCH = 100_000
MAX_TRANSFORMS = 100


# ---- sources ----------------------------------------------------------------------


def _source(c: Checker, raw: Any, path: str) -> Part | None:
    return _part(c, raw, path, kinds.SOURCES, "parse_source")


def _part(c: Checker, raw: Any, path: str, registry: Mapping[str, Any], parse: str) -> Part | None:
    """A ``{kind: options}`` of a registered source or destination kind."""
    picked = c.one_of(raw, path, tuple(registry))
    if picked is None:
        return None
    kind, options = picked
    out = getattr(registry[kind], parse)(c, options, f"{path}.{kind}")
    return None if out is None else Part(kind, out)


# ---- transforms ------------------------------------------------------------------


def _transform(c: Checker, raw: Any, path: str) -> Part | None:
    from datamcp.core.pipelines.transforms import KINDS, REGISTRY

    picked = c.one_of(raw, path, KINDS)
    if picked is None:
        return None
    kind, o = picked
    out = REGISTRY[kind].parse(c, o, f"{path}.{kind}")
    return None if out is None else Part(kind, out)


# ---- destination -----------------------------------------------------------------


def _destination(c: Checker, raw: Any, path: str) -> Part | None:
    return _part(c, raw, path, kinds.DESTINATIONS, "parse_destination")


# ---- whole spec ------------------------------------------------------------------

_TOP = (
    "source",
    "transforms",
    "destination",
    "schedule",
    "triggers",
    "incremental",
    "timeout",
    "batch_size",
    "max_rejects",
    "params",
)


def parse_spec(raw: Any, prefix: str = "") -> PipelineSpec:
    """Validate and normalize a spec given as plain data.

    Raises:
        InvalidArgument: every problem, each with its field path (under ``prefix``).
    """
    c = Checker()
    c.parse_source = lambda raw, path: _source(c, raw, path)
    spec = _parse(c, raw)
    if c.problems or spec is None:
        raise InvalidArgument(
            f"invalid pipeline spec: {len(c.problems)} problem(s)",
            [FieldViolation(prefix + p.field, p.description) for p in c.problems],
            reason="INVALID_PIPELINE",
        )
    return spec


def _parse(c: Checker, raw: Any) -> PipelineSpec | None:  # noqa: PLR0915
    if not isinstance(raw, Mapping):
        c.fail("spec", "expected a mapping with source, transforms and destination")
        return None
    # Values anywhere in the spec (params, in_list values, cursors...) must
    # survive JSON storage and protobuf Structs both ways.
    for p in json_problems(raw, ""):
        c.fail(p.field.lstrip("."), _json_hint(p.description))
    if c.problems:
        return None
    c.unknown(raw, "", _TOP)
    c.problems = [FieldViolation(p.field.lstrip("."), p.description) for p in c.problems]
    source = _source(c, raw.get("source"), "source") if "source" in raw else None
    if "source" not in raw:
        c.fail("source", "required")
    destination = None
    if "destination" not in raw:
        c.fail("destination", "required")
    else:
        destination = _destination(c, raw.get("destination"), "destination")
    transforms: list[Part] = []
    raw_t = raw.get("transforms") or []
    if not isinstance(raw_t, list):
        c.fail("transforms", "expected a list")
        raw_t = []
    if len(raw_t) > MAX_TRANSFORMS:
        c.fail("transforms", f"at most {MAX_TRANSFORMS} transforms")
    for i, item in enumerate(raw_t[:MAX_TRANSFORMS]):
        t = _transform(c, item, f"transforms[{i}]")
        if t is not None:
            transforms.append(t)
    schedule = c.string(raw, "schedule", "", limit=256).strip()
    if schedule and (len(schedule.split()) not in (5, 6) or not croniter.is_valid(schedule)):
        c.fail(
            "schedule",
            "expected a cron expression: 5 fields, for example '*/15 * * * *' "
            "(a 6th field, seconds, may follow)",
        )
    elif schedule and _never_fires(schedule):
        c.fail("schedule", "this cron expression never fires (a day that does not exist?)")
    triggers: list[dict[str, Any]] = []
    raw_tr = raw.get("triggers") or []
    if not isinstance(raw_tr, list):
        c.fail("triggers", "expected a list of {types, source, subject}")
        raw_tr = []
    if len(raw_tr) > 8:
        c.fail("triggers", "at most 8 triggers")
        raw_tr = raw_tr[:8]
    for i, item in enumerate(raw_tr):
        where = f"triggers[{i}]"
        m = c.mapping(item, where)
        if m is None:
            continue
        c.unknown(m, where, ("types", "source", "subject"))
        types = m.get("types")
        if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
            c.fail(f"{where}.types", "required: a list of event types ('prefix.*' allowed)")
            continue
        trig: dict[str, Any] = {
            "types": list(types),
            "source": c.string(m, "source", where),
            "subject": c.string(m, "subject", where),
        }
        c.event_filter(trig, where)
        triggers.append(trig)
    incremental = None
    if raw.get("incremental") is not None:
        m = c.mapping(raw["incremental"], "incremental")
        if m is not None:
            c.unknown(m, "incremental", ("column", "initial"))
            initial = m.get("initial")
            if not (initial is None or isinstance(initial, str | int | float)):
                c.fail("incremental.initial", "expected a number or a string")
                initial = None
            incremental = {
                "column": c.string(m, "column", "incremental", required=True),
                "initial": initial,
            }
    timeout = raw.get("timeout", 0) or 0
    problem = timeout_problem(timeout)
    if problem is not None:
        c.fail("timeout", problem)
        timeout = 0
    params = c.mapping(raw.get("params"), "params")
    batch_size = c.integer(raw, "batch_size", "", 0, 0, MAX_BATCH)
    max_rejects = c.integer(raw, "max_rejects", "", 0, 0, 2**62)
    c.problems = [FieldViolation(p.field.lstrip("."), p.description) for p in c.problems]
    if source is None or destination is None:
        return None
    return PipelineSpec(
        source=source,
        destination=destination,
        transforms=tuple(transforms),
        schedule=schedule,
        triggers=tuple(triggers),
        incremental=incremental,
        timeout=float(timeout),
        batch_size=batch_size,
        max_rejects=max_rejects,
        params=dict(params or {}),
    )


def _json_hint(description: str) -> str:
    if "date is not" in description or "datetime is not" in description:
        return "a date or time must be quoted text (YAML reads it as a date)"
    return description


def _never_fires(schedule: str) -> bool:
    try:
        croniter(schedule, 0.0).get_next(float)
    except Exception:  # croniter's own errors: no next slot
        return True
    return False


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's booleans: only true/false (any case).
    YAML 1.1 also reads on/off/yes/no/y/n as booleans, so ``lookup``'s
    ``on: {id: id}`` had a key ``True`` and a ``yes`` in a list was no text."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_text(text: str) -> Any:
    """Parse YAML (JSON is YAML too) with the safe loader and YAML 1.2's
    booleans.

    Raises:
        InvalidArgument: the text is not YAML/JSON, or is over 1 MiB.
    """
    if len(text) > MAX_SPEC_TEXT:
        raise InvalidArgument(
            "spec_text is too long",
            [FieldViolation("spec_text", f"at most {MAX_SPEC_TEXT} characters")],
            reason="INVALID_PIPELINE",
        )
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        raise InvalidArgument(
            f"spec_text is not valid YAML or JSON{at}",
            [FieldViolation("spec_text", f"not valid YAML or JSON{at}: {exc}")],
            reason="INVALID_PIPELINE",
        ) from None


def parse_document(raw: Any, prefix: str = "") -> Document:
    """A spec file: the spec's fields plus optional ``name`` and ``description``.

    Raises:
        InvalidArgument: with every problem found.
    """
    if not isinstance(raw, Mapping):
        raise InvalidArgument(
            "a pipeline file holds a mapping",
            [FieldViolation(prefix or "spec", "expected a mapping with source and destination")],
            reason="INVALID_PIPELINE",
        )
    problems: list[FieldViolation] = []
    name = raw.get("name", "")
    if name and (not isinstance(name, str) or not NAME_RE.match(name)):
        problems.append(FieldViolation(prefix + "name", NAME_HELP))
    description = raw.get("description", "")
    if not isinstance(description, str):
        problems.append(FieldViolation(prefix + "description", "expected a string"))
        description = ""
    body = {k: v for k, v in raw.items() if k not in ("name", "description")}
    try:
        spec = parse_spec(body, prefix)
    except InvalidArgument as exc:
        raise InvalidArgument(
            exc.message, [*problems, *exc.violations], reason="INVALID_PIPELINE"
        ) from None
    if problems:
        raise InvalidArgument("invalid pipeline", problems, reason="INVALID_PIPELINE")
    return Document(str(name or ""), description, spec)


NAME_HELP = "lower-case letters, digits, '-', '_' and '.', starting with a letter (max 128)"
