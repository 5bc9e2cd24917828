"""Memory records, versions, sync runs and conflicts (plain values).

A record's version is a hybrid logical clock (HLC) timestamp plus the id of
the store it was written on; its causal context is a version vector
(``vv``: store id -> newest HLC of that store's writes this version
includes). Causality is decided by the vectors only, never by wall clocks.
Values travel as JSON text so that sync can copy them without decoding.
"""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument, clip

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
STORE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_NAMESPACE = 256
MAX_DEPTH = 16
MAX_KEY = 512
MAX_TAGS = 32
MAX_TAG = 64
MAX_METADATA = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 1024
#: Longest time to live: 100 years. An expiry further out would leave the
#: range every reader (a protobuf Timestamp, a datetime) can represent.
MAX_TTL = 100 * 365.25 * 86_400


class Strategy(enum.IntEnum):
    """How concurrent versions are settled (values match the proto enum)."""

    UNSPECIFIED = 0
    TIMESTAMP_WINS = 1
    SOURCE_PRIORITY = 2
    MERGE = 3
    MANUAL = 4

    @classmethod
    def parse(cls, name: str, field_name: str = "strategy") -> Strategy:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise InvalidArgument(
                f"unknown strategy {clip(name)!r}",
                [FieldViolation(field_name, "timestamp_wins, source_priority, merge or manual")],
            ) from None


class SyncMode(enum.IntEnum):
    UNSPECIFIED = 0
    INCREMENTAL = 1
    FULL = 2


class RunStatus(enum.IntEnum):
    UNSPECIFIED = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    INTERRUPTED = 4

    @property
    def final(self) -> bool:
        return self not in (RunStatus.RUNNING, RunStatus.UNSPECIFIED)


class ConflictStatus(enum.IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    RESOLVED = 2


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """``<hlc hex>@<origin>``: orders by HLC, then store id (the tie-break)."""

    hlc: int
    origin: str

    def __str__(self) -> str:
        return f"{self.hlc:016x}@{self.origin}"

    @classmethod
    def parse(cls, text: str, field_name: str = "expected_version") -> Version:
        hlc, sep, origin = text.partition("@")
        try:
            if not sep or not origin:
                raise ValueError
            return cls(int(hlc, 16), origin)
        except ValueError:
            raise InvalidArgument(
                f"malformed version {clip(text)!r}",
                [FieldViolation(field_name, "a version as returned by Put/Get: <hex>@<store>")],
            ) from None


@dataclass(slots=True)
class Record:
    """One version of a key in one store (``seq`` is its place in that store's feed).

    ``base_json`` is the value this write replaced (the base of a three-way
    merge). ``leaves`` is set only on a record that settled a conflict: the
    concurrent original writes it stands for (each a dict with keys h, o, v,
    b, d, t, m, u, x), so that every store settles the same set of writes the
    same way whatever order syncs run in.
    """

    tenant: str
    namespace: str
    key: str
    value_json: str | None
    hlc: int
    origin: str
    vv: dict[str, int]
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None
    deleted: bool = False
    base_json: str | None = None
    leaves: list[dict[str, Any]] | None = None
    seq: int = 0
    #: The store this exact version was copied from ("" or the store's own id
    #: for a write or a settlement made here). A pull from X skips records that
    #: came from X: X already has them or something newer.
    via: str = ""

    @property
    def version(self) -> Version:
        return Version(self.hlc, self.origin)

    @property
    def value(self) -> Any:
        return None if self.value_json is None else json.loads(self.value_json)

    @property
    def ident(self) -> tuple[str, str]:
        return (self.namespace, self.key)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def visible(self, now: float) -> bool:
        return not self.deleted and not self.expired(now)

    def leaf(self) -> dict[str, Any]:
        """This record as one original write (for conflict settlement)."""
        return {
            "h": self.hlc,
            "o": self.origin,
            "v": self.value_json,
            "b": self.base_json,
            "d": self.deleted,
            "t": list(self.tags),
            "m": self.metadata,
            "u": self.updated_at,
            "x": self.expires_at,
        }

    def copy(self, **changes: Any) -> Record:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (the memory agent's answers, event data)."""
        return {
            "namespace": self.namespace,
            "key": self.key,
            "value": self.value,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "version": str(self.version),
            "deleted": self.deleted,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class PutOp:
    """One write asked for by a caller (``value_json`` None = delete)."""

    namespace: str
    key: str
    value_json: str | None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl: float | None = None
    expected_version: str = ""
    field_prefix: str = ""
    #: A purge of an expired record: a tombstone written over it (which only
    #: an unchanged, expired ``expected_version`` may be).
    expire: bool = False


@dataclass(frozen=True, slots=True)
class NamespacePolicy:
    """Conflict settings for a namespace prefix (longest prefix applies)."""

    prefix: str
    strategy: Strategy = Strategy.TIMESTAMP_WINS
    tie_break: Strategy = Strategy.TIMESTAMP_WINS
    priority: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, raw: Mapping[str, Any]) -> NamespacePolicy:
        """One ``memory.policies`` entry: {prefix, strategy, tie_break, priority}.

        Raises:
            InvalidArgument: an unknown strategy, or a tie-break that picks no
                winner (merge).
        """
        strategy = Strategy.parse(str(raw.get("strategy", "timestamp_wins")))
        tie_break = Strategy.parse(str(raw.get("tie_break", "timestamp_wins")), "tie_break")
        if strategy == Strategy.UNSPECIFIED:
            raise InvalidArgument(
                "unknown strategy 'unspecified'",
                [FieldViolation("strategy", "timestamp_wins, source_priority, merge or manual")],
            )
        if tie_break in (Strategy.UNSPECIFIED, Strategy.MERGE):
            raise InvalidArgument(
                f"tie_break {tie_break.name.lower()!r} picks no winner",
                [FieldViolation("tie_break", "timestamp_wins, source_priority or manual")],
            )
        priority = raw.get("priority", [])
        return cls(
            str(raw.get("prefix", "")),
            strategy,
            tie_break,
            tuple(str(x) for x in priority) if isinstance(priority, list) else (),
        )


@dataclass(frozen=True, slots=True)
class SyncRequest:
    stores: tuple[str, ...] = ()
    strategy: Strategy = Strategy.UNSPECIFIED
    mode: SyncMode = SyncMode.INCREMENTAL
    dry_run: bool = False
    namespace_prefix: str = ""
    priority: tuple[str, ...] = ()
    tie_break: Strategy = Strategy.UNSPECIFIED
    trigger: str = "manual"
    sync_id: str = ""


@dataclass(slots=True)
class SyncRun:
    id: str
    tenant: str
    status: RunStatus
    strategy: Strategy
    mode: SyncMode
    stores: tuple[str, ...]
    dry_run: bool
    namespace_prefix: str
    trigger: str
    started_at: float
    owner: str = ""
    ended_at: float | None = None
    records_read: int = 0
    records_synced: int = 0
    conflicts_detected: int = 0
    conflicts_resolved: int = 0
    conflicts_pending: int = 0
    error: str = ""

    @property
    def duration(self) -> float:
        return (self.ended_at or time.time()) - self.started_at


@dataclass(slots=True)
class Conflict:
    id: str
    tenant: str
    namespace: str
    key: str
    status: ConflictStatus
    strategy: Strategy
    sync_id: str
    versions: list[Record]
    winner: str
    detected_at: float
    resolved_at: float | None = None


def check_namespace(namespace: str, field_name: str = "namespace", *, prefix: bool = False) -> str:
    """Validate a namespace (or, with ``prefix``, an optional namespace prefix)."""
    if prefix and not namespace:
        return ""
    ok = (
        NAMESPACE_RE.match(namespace) is not None
        and len(namespace) <= MAX_NAMESPACE
        and namespace.count("/") < MAX_DEPTH
    )
    if not ok:
        raise InvalidArgument(
            f"invalid namespace {clip(namespace)!r}",
            [
                FieldViolation(
                    field_name,
                    f"slash-separated segments of letters, digits, '_', '.', '-'; at most "
                    f"{MAX_NAMESPACE} characters and {MAX_DEPTH} levels",
                )
            ],
        )
    return namespace


def check_key(key: str, field_name: str = "key") -> str:
    if not key or len(key) > MAX_KEY or any(ord(c) < 32 for c in key):
        raise InvalidArgument(
            "invalid key",
            [FieldViolation(field_name, f"1 to {MAX_KEY} characters, no control characters")],
        )
    return key


def check_labels(
    tags: Sequence[str], metadata: Mapping[str, str], prefix: str = ""
) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if len(tags) > MAX_TAGS or any(not t or len(t) > MAX_TAG for t in tags):
        bad.append(FieldViolation(f"{prefix}tags", f"at most {MAX_TAGS} tags of 1-{MAX_TAG} chars"))
    if len(metadata) > MAX_METADATA or any(
        not k or len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE
        for k, v in metadata.items()
    ):
        bad.append(
            FieldViolation(
                f"{prefix}metadata",
                f"at most {MAX_METADATA} pairs, keys 1-{MAX_METADATA_KEY} chars, "
                f"values up to {MAX_METADATA_VALUE}",
            )
        )
    return bad


def write_op(
    namespace: str,
    key: str,
    value: Any,
    *,
    max_value_bytes: int,
    delete: bool = False,
    tags: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
    ttl: float | None = None,
    expected_version: str = "",
    field_prefix: str = "",
) -> PutOp:
    """Validate one write; raises InvalidArgument listing every problem."""
    bad: list[FieldViolation] = []
    try:
        check_namespace(namespace, f"{field_prefix}namespace")
    except InvalidArgument as exc:
        bad.extend(exc.violations)
    try:
        check_key(key, f"{field_prefix}key")
    except InvalidArgument as exc:
        bad.extend(exc.violations)
    metadata = dict(metadata or {})
    bad.extend(check_labels(tags, metadata, field_prefix))
    value_json: str | None = None
    if not delete:
        try:
            value_json = json.dumps(value, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            bad.append(FieldViolation(f"{field_prefix}value", "must be JSON"))
        else:
            size = len(value_json.encode("utf-8"))
            if size > max_value_bytes:
                bad.append(
                    FieldViolation(
                        f"{field_prefix}value",
                        f"{size} bytes is over the {max_value_bytes}-byte limit "
                        "(memory.max_value_bytes)",
                    )
                )
    if ttl is not None and not 0 < ttl <= MAX_TTL:  # also NaN
        bad.append(
            FieldViolation(f"{field_prefix}ttl", "when given, more than 0s and at most 100 years")
        )
    if bad:
        raise InvalidArgument("invalid memory write", bad, reason="INVALID_MEMORY_WRITE")
    return PutOp(
        namespace,
        key,
        value_json,
        tuple(tags),
        metadata,
        ttl,
        expected_version,
        field_prefix,
    )


def in_prefix(namespace: str, prefix: str) -> bool:
    """Whether ``namespace`` is ``prefix`` or below it (``a/b`` holds ``a/b/c``)."""
    return not prefix or namespace == prefix or namespace.startswith(prefix + "/")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
