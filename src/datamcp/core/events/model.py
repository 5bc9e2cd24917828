"""Events in the CloudEvents 1.0 shape, the filters subscriptions use, and
the records of a subscription (its stats, deliveries and dead letters).

An event's identity is (tenant, id): a producer may choose the id, and a
second publish of an id already stored is a no-op (idempotent publish).
``seq`` is assigned by the store: a monotonic position in that store.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument, clip

#: Lower-case dotted names of at least two segments: ``pipeline.run.succeeded``.
TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")
#: A pattern is an exact type or a prefix ending in ``.*``, or ``*`` for all.
PATTERN_RE = re.compile(r"^(\*|[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*(\.\*)?)$")
#: The tenant of system subscriptions that see every tenant's events (broker
#: relays). Authentication refuses it as a caller's tenant.
ALL_TENANTS = "*"
MAX_ID = 128
MAX_SOURCE = 512
MAX_TYPE = 256
MAX_SUBJECT = 512
MAX_CORRELATION_ID = 128
MAX_TRACEPARENT = 128
MAX_FILTER_TYPES = 64
DEFAULT_MAX_DATA_BYTES = 256 * 1024
#: Event times an event may carry: years 1 to 9999 (what a Timestamp holds).
MIN_TIME = -62_135_596_800.0
MAX_TIME = 253_402_300_799.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Event:
    """One CloudEvent plus the mesh's envelope fields (tenant, correlation, trace)."""

    id: str
    source: str
    type: str
    data: Any = None
    subject: str = ""
    time: float = 0.0
    datacontenttype: str = "application/json"
    tenant: str = "default"
    correlation_id: str = ""
    traceparent: str = ""
    seq: int = 0
    #: The data as JSON text, when already serialised (validation does it once).
    data_text: str = field(default="", compare=False, repr=False)

    def data_json(self) -> str:
        return self.data_text or json.dumps(self.data, separators=(",", ":"))

    def to_cloudevent(self) -> dict[str, Any]:
        """The structured-mode CloudEvents JSON form (for brokers and Lambda)."""
        out: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": _rfc3339(self.time),
            "datacontenttype": self.datacontenttype,
            "data": self.data,
            "tenant": self.tenant,
        }
        if self.subject:
            out["subject"] = self.subject
        if self.correlation_id:
            out["correlationid"] = self.correlation_id
        if self.traceparent:
            out["traceparent"] = self.traceparent
        if self.seq:
            out["sequence"] = self.seq
        return out


def _rfc3339(epoch: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int((epoch % 1) * 1_000_000):06d}Z"


def new_event(
    *,
    type: str,
    source: str,
    data: Any = None,
    subject: str = "",
    tenant: str = "default",
    id: str | None = None,
    time_: float | None = None,
    correlation_id: str = "",
    traceparent: str = "",
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES,
    field_prefix: str = "",
) -> Event:
    """Validate and build an event.

    Raises:
        InvalidArgument: with one field violation per problem.
    """
    violations: list[FieldViolation] = []

    def bad(name: str, why: str) -> None:
        violations.append(FieldViolation(f"{field_prefix}{name}", why))

    if len(type) > MAX_TYPE or not TYPE_RE.match(type or ""):
        bad(
            "type",
            f"lower-case dotted words, at least two (e.g. task.succeeded), at most {MAX_TYPE} "
            "characters",
        )
    if not source or not _plain(source, MAX_SOURCE):
        bad("source", f"required: a URI reference of at most {MAX_SOURCE} characters")
    if not _plain(subject, MAX_SUBJECT):
        bad("subject", f"at most {MAX_SUBJECT} characters, no control characters")
    if id is not None and (not id or not _plain(id, MAX_ID)):
        bad("id", f"when given, 1 to {MAX_ID} characters, no control characters")
    if not _plain(correlation_id, MAX_CORRELATION_ID):
        bad("correlation_id", f"at most {MAX_CORRELATION_ID} characters, no control characters")
    if not _plain(traceparent, MAX_TRACEPARENT):
        bad("traceparent", f"at most {MAX_TRACEPARENT} characters, no control characters")
    if time_ is not None and not MIN_TIME <= time_ <= MAX_TIME:  # also NaN
        bad("time", "a time between 0001-01-01 and 9999-12-31 (UTC)")
    text = ""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        bad("data", "must be JSON (no NaN or Infinity)")
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > max_data_bytes:
        bad("data", f"{size} bytes is over the {max_data_bytes}-byte limit")
    if violations:
        raise InvalidArgument("invalid event", violations, reason="INVALID_EVENT")
    return Event(
        id=id or uuid.uuid4().hex,
        source=source,
        type=type,
        data=data,
        subject=subject,
        time=time.time() if time_ is None else time_,
        tenant=tenant,
        correlation_id=correlation_id,
        traceparent=traceparent,
        data_text=text,
    )


def _plain(text: str, limit: int) -> bool:
    """At most ``limit`` characters and no control characters: what ids,
    sources and subjects may be (they are keys, log fields and headers)."""
    return len(text) <= limit and _CONTROL.search(text) is None


def validate_pattern(pattern: str, field_name: str = "types") -> None:
    if len(pattern) > MAX_TYPE or not PATTERN_RE.match(pattern):
        raise InvalidArgument(
            f"invalid type pattern {clip(pattern)!r}",
            [
                FieldViolation(
                    field_name, f"exact type, prefix ending in '.*', or '*'; up to {MAX_TYPE} chars"
                )
            ],
            reason="INVALID_PATTERN",
        )


def type_matches(pattern: str, event_type: str) -> bool:
    """``pipeline.run.*`` matches ``pipeline.run.succeeded`` and deeper; ``*`` all."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscription, replay or trigger wants.

    Empty ``types`` means every type; ``source`` and ``subject`` match exactly
    when set, or as a prefix when they end in ``*``.
    """

    types: tuple[str, ...] = ()
    source: str = ""
    subject: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls, types: Sequence[str] = (), source: str = "", subject: str = "", prefix: str = ""
    ) -> EventFilter:
        """A checked filter (``prefix`` goes before field names in violations).

        Raises:
            InvalidArgument: a bad pattern, too many of them, or a source or
                subject an event could not have.
        """
        bad: list[FieldViolation] = []
        message = "invalid event filter"
        if len(types) > MAX_FILTER_TYPES:
            bad.append(FieldViolation(f"{prefix}types", f"at most {MAX_FILTER_TYPES} patterns"))
        for pattern in types:
            try:
                validate_pattern(pattern, f"{prefix}types")
            except InvalidArgument as exc:
                bad.extend(exc.violations)
                message = exc.message
                break
        if not _plain(source, MAX_SOURCE):
            bad.append(FieldViolation(f"{prefix}source", f"at most {MAX_SOURCE} characters"))
        if not _plain(subject, MAX_SUBJECT):
            bad.append(FieldViolation(f"{prefix}subject", f"at most {MAX_SUBJECT} characters"))
        if bad:
            raise InvalidArgument(message, bad, reason="INVALID_FILTER")
        return cls(tuple(types), source, subject)

    def matches(self, event: Event) -> bool:
        if self.types and not any(type_matches(p, event.type) for p in self.types):
            return False
        return _text_matches(self.source, event.source) and _text_matches(
            self.subject, event.subject
        )

    def to_json(self) -> str:
        return json.dumps(
            {"types": list(self.types), "source": self.source, "subject": self.subject}
        )

    @classmethod
    def from_json(cls, text: str) -> EventFilter:
        raw = json.loads(text)
        return cls(tuple(raw.get("types", ())), raw.get("source", ""), raw.get("subject", ""))


def _text_matches(want: str, value: str) -> bool:
    if not want:
        return True
    if want.endswith("*"):
        return value.startswith(want[:-1])
    return want == value


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    tenant: str
    name: str
    filter: EventFilter
    cursor: int
    max_attempts: int
    visibility_timeout: float
    created_at: float
    #: Lease a delivery only while it heads its subject (per-subject order).
    ordered: bool = True


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    pending: int
    in_flight: int
    unread: int
    dead_letters: int

    @property
    def lag(self) -> int:
        """Events not yet acked: waiting, in flight, or not yet looked at."""
        return self.pending + self.in_flight + self.unread


@dataclass(frozen=True, slots=True)
class Delivery:
    event: Event
    attempt: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    subscription: str
    event: Event
    attempts: int
    last_error: str
    dead_at: float
