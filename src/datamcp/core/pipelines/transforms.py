"""Transforms compiled against a row layout into batch functions.

:func:`compile_stages` walks the spec's transforms with the source's columns,
checks every column reference (problems name the transform's field path),
and builds one :class:`Stage` per transform. Expressions are compiled once
to closures; casts use per-column converters chosen up front. Each stage
works on a whole batch and tries a tight loop first, falling back to a
per-row loop that rejects bad rows only when that batch has one.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from datamcp.core.errors import FieldViolation, InvalidArgument
from datamcp.core.pipelines.expr import EvalError, ExprError, Shape, compile_expr
from datamcp.core.pipelines.model import StageCounters
from datamcp.core.pipelines.rows import (
    CONVERTERS,
    Batch,
    CastError,
    RejectSink,
    Row,
    StageError,
    is_type,
)
from datamcp.core.pipelines.spec import Part

SORT_SPILL_ROWS = 200_000
OUT_BATCH = 10_000


class Stage:
    """One transform. ``process`` maps a batch; blocking stages (aggregate,
    sort) emit their rows from ``finish`` once the input ends."""

    blocking = False

    def __init__(self, name: str, columns: list[str]) -> None:
        self.name = name
        self.columns = columns
        self.counters = StageCounters(name)
        self.in_columns: list[str] = []
        self.shape: Shape | None = None  # an expression's inlinable numeric shape

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        raise NotImplementedError

    def finish(self, rejects: RejectSink) -> Iterator[Batch]:
        return iter(())

    def close(self) -> None:
        """Free resources (spill files)."""


class _Filter(Stage):
    def __init__(self, name: str, columns: list[str], pred: Callable[[Row], Any]) -> None:
        super().__init__(name, columns)
        self.pred = pred

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        pred = self.pred
        try:
            return [r for r in rows if pred(r)]
        except EvalError:
            pass
        out: Batch = []
        for r in rows:
            try:
                if pred(r):
                    out.append(r)
            except EvalError as exc:
                rejects.add(self.counters, self.columns, r, f"filter: {exc}")
        return out


class _Derive(Stage):
    def __init__(
        self, name: str, columns: list[str], fn: Callable[[Row], Any], index: int | None
    ) -> None:
        super().__init__(name, columns)
        self.fn = fn
        self.index = index  # None: a new column appended

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        fn, index = self.fn, self.index
        try:
            values = [fn(r) for r in rows]
        except EvalError:
            return self._slow(rows, rejects)
        if index is None:
            for r, v in zip(rows, values, strict=True):
                r.append(v)
        else:
            for r, v in zip(rows, values, strict=True):
                r[index] = v
        return rows

    def _slow(self, rows: Batch, rejects: RejectSink) -> Batch:
        out: Batch = []
        for r in rows:
            try:
                v = self.fn(r)
            except EvalError as exc:
                rejects.add(self.counters, self.in_columns, r, f"derive {self.columns[-1]}: {exc}")
                continue
            if self.index is None:
                r.append(v)
            else:
                r[self.index] = v
            out.append(r)
        return out


class _Reorder(Stage):
    """select / drop: a new row of chosen positions."""

    def __init__(self, name: str, columns: list[str], indexes: list[int]) -> None:
        super().__init__(name, columns)
        self.indexes = indexes

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        idx = self.indexes
        if len(idx) == 1:
            i = idx[0]
            return [[r[i]] for r in rows]
        return [[r[i] for i in idx] for r in rows]


class _Rename(Stage):
    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        return rows


class _Cast(Stage):
    def __init__(
        self,
        name: str,
        columns: list[str],
        strict: list[tuple[int, str, Callable[[Any], Any]]],
        fast: list[tuple[int, Callable[[Any], Any]]] | None,
    ) -> None:
        super().__init__(name, columns)
        self.strict = strict
        self.fast = fast  # builtins usable when every input is text

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        if self.fast is not None:
            try:
                if len(self.fast) == 1:
                    ((i, conv),) = self.fast
                    for r in rows:
                        r[i] = conv(r[i])
                else:
                    for r in rows:
                        for i, conv in self.fast:
                            r[i] = conv(r[i])
                return rows
            except (ValueError, TypeError, OverflowError):
                pass  # some value needs the careful path; converters are idempotent
        out: Batch = []
        for r in rows:
            try:
                for i, col, conv in self.strict:
                    try:
                        r[i] = conv(r[i])
                    except CastError as exc:
                        raise CastError(f"cast {col}: {exc}") from None
            except CastError as exc:
                rejects.add(self.counters, self.columns, r, str(exc))
                continue
            out.append(r)
        return out


class _Validate(Stage):
    def __init__(
        self, name: str, columns: list[str], rules: list[Callable[[Row], str | None]]
    ) -> None:
        super().__init__(name, columns)
        self.rules = rules

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        out: Batch = []
        rules = self.rules
        for r in rows:
            for rule in rules:
                problem = rule(r)
                if problem is not None:
                    rejects.add(self.counters, self.columns, r, problem)
                    break
            else:
                out.append(r)
        return out


class _Dedupe(Stage):
    def __init__(self, name: str, columns: list[str], indexes: list[int]) -> None:
        super().__init__(name, columns)
        self.indexes = indexes
        self.seen: set[Any] = set()

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        out: Batch = []
        seen = self.seen
        idx = self.indexes
        for r in rows:
            key = _hashable(r[idx[0]]) if len(idx) == 1 else tuple(_hashable(r[i]) for i in idx)
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out


def _hashable(v: Any) -> Any:
    if isinstance(v, dict | list):
        return repr(v)
    return v


class _Aggregate(Stage):
    blocking = True

    def __init__(
        self,
        name: str,
        columns: list[str],
        group: list[int],
        aggs: list[tuple[str, int | None, str]],
    ) -> None:
        super().__init__(name, columns)
        self.group = group
        self.aggs = aggs  # (op, input index or None, column name)
        self.state: dict[Any, list[Any]] = {}

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        state = self.state
        for r in rows:
            try:
                values: list[Any] = []
                for op, index, col in self.aggs:
                    v = None if index is None else r[index]
                    if op != "count" and v is not None and not _is_number(v):
                        if op in ("min", "max") and isinstance(v, str):
                            values.append(v)
                            continue
                        raise ValueError(f"{op}({col}): {v!r} is not a number")
                    values.append(v)
            except ValueError as exc:
                rejects.add(self.counters, self.in_columns, r, f"aggregate: {exc}")
                continue
            key = tuple(_hashable(r[i]) for i in self.group)
            acc = state.get(key)
            if acc is None:
                acc = state[key] = [[r[i] for i in self.group], *([None, 0] for _ in self.aggs)]
            for n, ((op, index, _col), v) in enumerate(zip(self.aggs, values, strict=True)):
                slot = acc[n + 1]
                if op == "count":
                    if index is None or v is not None:
                        slot[1] += 1
                elif v is None:
                    continue
                elif op in ("sum", "avg"):
                    slot[0] = v if slot[0] is None else slot[0] + v
                    slot[1] += 1
                elif op == "min":
                    if slot[0] is None or _lt(v, slot[0], self.name):
                        slot[0] = v
                elif slot[0] is None or _lt(slot[0], v, self.name):
                    slot[0] = v
        return []

    def finish(self, rejects: RejectSink) -> Iterator[Batch]:
        batch: Batch = []
        for acc in self.state.values():
            row = list(acc[0])
            for n, (op, _index, _col) in enumerate(self.aggs):
                value, count = acc[n + 1]
                if op == "count":
                    row.append(count)
                elif op == "avg":
                    row.append(None if not count else value / count)
                else:
                    row.append(value)
            batch.append(row)
            if len(batch) >= OUT_BATCH:
                yield batch
                batch = []
        self.state = {}
        if batch:
            yield batch


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _lt(a: Any, b: Any, stage: str) -> bool:
    try:
        return bool(a < b)
    except TypeError:
        raise StageError(
            f"{stage}: cannot compare {type(a).__name__} with {type(b).__name__}; cast first"
        ) from None


class _Desc:
    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.v < self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.v == other.v)

    __hash__ = None  # type: ignore[assignment]


class _Sort(Stage):
    """Sorts in memory up to a bound, then spills sorted runs to temp files
    and merges them, so memory stays bounded whatever the input size."""

    blocking = True

    def __init__(self, name: str, columns: list[str], keys: list[tuple[int, bool]]) -> None:
        super().__init__(name, columns)
        self.keys = keys
        self.buffer: Batch = []
        self.files: list[str] = []

    def key(self, r: Row) -> tuple[Any, ...]:
        out: list[Any] = []
        for i, desc in self.keys:
            v = r[i]
            # nulls last in either direction
            if desc:
                out.append((v is None, _Desc(v) if v is not None else None))
            else:
                out.append((v is None, v))
        return tuple(out)

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        self.buffer.extend(rows)
        if len(self.buffer) >= SORT_SPILL_ROWS:
            self._spill()
        return []

    def _sorted(self, rows: Batch) -> Batch:
        try:
            return sorted(rows, key=self.key)
        except TypeError:
            raise StageError(
                f"{self.name}: a sort column mixes types (say numbers and text); cast it first"
            ) from None

    def _spill(self) -> None:
        rows = self._sorted(self.buffer)
        self.buffer = []
        fd, path = tempfile.mkstemp(prefix="datamcp-sort-", suffix=".bin")
        self.files.append(path)
        with os.fdopen(fd, "wb") as f:
            for start in range(0, len(rows), OUT_BATCH):
                pickle.dump(rows[start : start + OUT_BATCH], f, pickle.HIGHEST_PROTOCOL)

    def finish(self, rejects: RejectSink) -> Iterator[Batch]:
        try:
            if not self.files:
                rows = self._sorted(self.buffer)
                self.buffer = []
                for start in range(0, len(rows), OUT_BATCH):
                    yield rows[start : start + OUT_BATCH]
                return
            if self.buffer:
                self._spill()
            runs = [_read_run(p) for p in self.files]
            batch: Batch = []
            try:
                for r in heapq.merge(*runs, key=self.key):
                    batch.append(r)
                    if len(batch) >= OUT_BATCH:
                        yield batch
                        batch = []
            except TypeError:
                raise StageError(f"{self.name}: a sort column mixes types; cast it first") from None
            if batch:
                yield batch
        finally:
            self.close()

    def close(self) -> None:
        for p in self.files:
            with contextlib.suppress(OSError):
                os.unlink(p)
        self.files = []


def _read_run(path: str) -> Iterator[Row]:
    # Our own temp file, written by this process just before: safe to unpickle.
    with open(path, "rb") as f:
        while True:
            try:
                chunk = pickle.load(f)
            except EOFError:
                return
            yield from chunk


class _Lookup(Stage):
    def __init__(  # noqa: PLR0917
        self,
        name: str,
        columns: list[str],
        keys: list[int],
        table: dict[Any, list[Any]],
        width: int,
        inner: bool,
    ) -> None:
        super().__init__(name, columns)
        self.keys = keys
        self.table = table
        self.missing = [None] * width
        self.inner = inner

    def process(self, rows: Batch, rejects: RejectSink) -> Batch:
        out: Batch = []
        table, keys, missing = self.table, self.keys, self.missing
        for r in rows:
            key = r[keys[0]] if len(keys) == 1 else tuple(r[i] for i in keys)
            found = table.get(_hashable(key))
            if found is None:
                if self.inner:
                    continue
                r.extend(missing)
            else:
                r.extend(found)
            out.append(r)
        return out


# ---- compilation --------------------------------------------------------------------


LookupData = tuple[list[str], Batch]


def compile_stages(  # noqa: PLR0915 - one branch per transform kind
    transforms: Sequence[Part],
    columns: Sequence[str],
    *,
    params: Mapping[str, Any],
    text_columns: frozenset[str] = frozenset(),
    lookups: Mapping[int, LookupData] | None = None,
) -> tuple[list[Stage], dict[str, str]]:
    """Stages for ``transforms`` over rows of ``columns``.

    ``text_columns`` are known to hold only strings (or nulls) as the source
    gives them (CSV); casts of those use the builtins directly. ``lookups``
    holds each lookup transform's rows by its index.

    Returns the stages and the declared column types (from casts) at the end.

    Raises:
        InvalidArgument: a transform names a column that does not exist at
            its place, or an expression does not compile; every problem is
            listed with its field path.
    """
    problems: list[FieldViolation] = []
    stages: list[Stage] = []
    cols = list(columns)
    texts = set(text_columns)
    declared: dict[str, str] = {}
    for n, part in enumerate(transforms):
        path = f"transforms[{n}].{part.kind}"
        o = part.options
        before = list(cols)

        def need(names: Sequence[str], where: str, cols: list[str] = cols) -> list[int]:
            out: list[int] = []
            for name in names:
                if name in cols:
                    out.append(cols.index(name))
                else:
                    problems.append(
                        FieldViolation(
                            where, f"unknown column {name!r} (columns here: {', '.join(cols)})"
                        )
                    )
            return out

        stage: Stage | None = None
        if part.kind == "filter":
            try:
                compiled = compile_expr(o["expr"], cols, params)
                stage = _Filter(path, cols, compiled.fn)
                stage.shape = compiled.shape
            except ExprError as exc:
                problems.append(FieldViolation(f"{path}.expr", str(exc)))
        elif part.kind == "derive":
            shape = None
            try:
                compiled = compile_expr(o["expr"], cols, params)
                fn, shape = compiled.fn, compiled.shape
            except ExprError as exc:
                problems.append(FieldViolation(f"{path}.expr", str(exc)))
                fn = None
            target = o["column"]
            index = cols.index(target) if target in cols else None
            if index is None:
                cols = [*cols, target]
            texts.discard(target)
            declared.pop(target, None)
            if fn is not None:
                stage = _Derive(path, cols, fn, index)
                stage.shape = shape
        elif part.kind in ("select", "drop"):
            idx = need(o["columns"], f"{path}.columns")
            if part.kind == "drop":
                gone = set(idx)
                idx = [i for i in range(len(cols)) if i not in gone]
            cols = [cols[i] for i in idx]
            stage = _Reorder(path, cols, idx)
        elif part.kind == "rename":
            mapping = o["columns"]
            need(list(mapping), f"{path}.columns")
            cols = [mapping.get(c, c) for c in cols]
            if len(set(cols)) != len(cols):
                problems.append(FieldViolation(f"{path}.columns", "renaming makes names repeat"))
            texts = {mapping.get(c, c) for c in texts}
            declared = {mapping.get(c, c): t for c, t in declared.items()}
            stage = _Rename(path, cols)
        elif part.kind == "cast":
            mapping = o["columns"]
            idx = need(list(mapping), f"{path}.columns")
            strict = [(cols.index(c), c, CONVERTERS[t]) for c, t in mapping.items() if c in cols]
            fast: list[tuple[int, Callable[[Any], Any]]] | None = []
            for c, t in mapping.items():
                if c not in cols:
                    continue
                builtin = {"integer": int, "float": float, "string": str}.get(t)
                if c not in texts or builtin is None:
                    fast = None
                    break
                assert fast is not None
                fast.append((cols.index(c), builtin))
            del idx
            for c, t in mapping.items():
                declared[c] = t
                texts.discard(c)
            stage = _Cast(path, cols, strict, fast)
        elif part.kind == "validate":
            stage = _validate_stage(path, cols, o, need, problems)
        elif part.kind == "dedupe":
            idx = need(o["keys"], f"{path}.keys") if o["keys"] else list(range(len(cols)))
            stage = _Dedupe(path, cols, idx)
        elif part.kind == "aggregate":
            group = need(o["group_by"], f"{path}.group_by")
            aggs: list[tuple[str, int | None, str]] = []
            for k, a in enumerate(o["aggregations"]):
                index = None
                if a["column"]:
                    found = need([a["column"]], f"{path}.aggregations[{k}].column")
                    index = found[0] if found else None
                aggs.append((a["op"], index, a["column"]))
            out_cols = [*o["group_by"], *(a["output"] for a in o["aggregations"])]
            new_declared = {c: declared[c] for c in o["group_by"] if c in declared}
            for a in o["aggregations"]:
                if a["op"] == "count":
                    new_declared[a["output"]] = "integer"
                elif a["op"] == "avg":
                    new_declared[a["output"]] = "float"
            declared = new_declared
            texts = {c for c in texts if c in o["group_by"]}
            cols = out_cols
            stage = _Aggregate(path, cols, group, aggs)
        elif part.kind == "sort":
            keys = []
            for k, key in enumerate(o["keys"]):
                found = need([key["column"]], f"{path}.keys[{k}].column")
                if found:
                    keys.append((found[0], bool(key["descending"])))
            stage = _Sort(path, cols, keys)
        elif part.kind == "lookup":
            data = (lookups or {}).get(n)
            left = need(list(o["on"]), f"{path}.on")
            if data is None:
                problems.append(FieldViolation(f"{path}.source", "lookup rows were not loaded"))
            else:
                lcols, lrows = data
                right: list[int] = []
                for name in o["on"].values():
                    if name not in lcols:
                        problems.append(
                            FieldViolation(
                                f"{path}.on",
                                f"unknown lookup column {name!r} "
                                f"(lookup columns: {', '.join(lcols)})",
                            )
                        )
                    else:
                        right.append(lcols.index(name))
                keys_right = set(o["on"].values())
                wanted = o["columns"] or [c for c in lcols if c not in keys_right]
                take = []
                for name in wanted:
                    if name not in lcols:
                        problems.append(
                            FieldViolation(f"{path}.columns", f"unknown lookup column {name!r}")
                        )
                    else:
                        take.append(lcols.index(name))
                clash = [c for c in wanted if c in cols]
                if clash:
                    problems.append(
                        FieldViolation(
                            f"{path}.columns",
                            f"{', '.join(clash)} already exist; select other columns or rename",
                        )
                    )
                table: dict[Any, list[Any]] = {}
                if len(right) == len(o["on"]) and len(take) == len(wanted):
                    for r in lrows:
                        key = r[right[0]] if len(right) == 1 else tuple(r[i] for i in right)
                        table.setdefault(_hashable(key), [r[i] for i in take])
                cols = [*cols, *wanted]
                stage = _Lookup(path, cols, left, table, len(wanted), o["how"] == "inner")
        if stage is not None:
            stage.in_columns = before
            stages.append(stage)
    if problems:
        raise InvalidArgument(
            f"the transforms do not fit the source's columns ({len(problems)} problem(s))",
            problems,
            reason="INVALID_PIPELINE",
        )
    return stages, declared


def _validate_stage(
    path: str,
    cols: list[str],
    o: Mapping[str, Any],
    need: Callable[[Sequence[str], str], list[int]],
    problems: list[FieldViolation],
) -> Stage:
    rules: list[Callable[[Row], str | None]] = []
    for col in o["schema"]:
        if col not in cols:
            problems.append(
                FieldViolation(f"{path}.schema.{col}", f"required column {col!r} is missing")
            )
    for i in need(o["not_null"], f"{path}.not_null"):
        rules.append(_not_null(i, cols[i]))
    for col, kind in o["schema"].items():
        if col in cols:
            rules.append(_typed(cols.index(col), col, kind))
    for col, bounds in o["range"].items():
        for i in need([col], f"{path}.range.{col}"):
            rules.append(_in_range(i, col, bounds.get("min"), bounds.get("max")))
    for col, pattern in o["regex"].items():
        for i in need([col], f"{path}.regex.{col}"):
            rules.append(_matches(i, col, re.compile(pattern)))
    for col, values in o["in_list"].items():
        for i in need([col], f"{path}.in_list.{col}"):
            rules.append(_listed(i, col, values))
    for i in need(o["unique"], f"{path}.unique"):
        rules.append(_unique(i, cols[i]))
    return _Validate(path, cols, rules)


def _not_null(i: int, col: str) -> Callable[[Row], str | None]:
    def rule(r: Row) -> str | None:
        v = r[i]
        return f"not_null: {col} is empty" if v is None or v == "" else None

    return rule


def _typed(i: int, col: str, kind: str) -> Callable[[Row], str | None]:
    def rule(r: Row) -> str | None:
        return None if is_type(r[i], kind) else f"schema: {col} is not {kind}: {r[i]!r}"

    return rule


def _in_range(i: int, col: str, lo: float | None, hi: float | None) -> Callable[[Row], str | None]:
    def rule(r: Row) -> str | None:
        v = r[i]
        if v is None:
            return None
        if not _is_number(v):
            return f"range: {col} is not a number: {v!r}"
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"range: {col}={v!r} is outside [{lo}, {hi}]"
        return None

    return rule


def _matches(i: int, col: str, pattern: re.Pattern[str]) -> Callable[[Row], str | None]:
    def rule(r: Row) -> str | None:
        v = r[i]
        if v is None or pattern.fullmatch(str(v)):
            return None
        return f"regex: {col}={v!r} does not match {pattern.pattern!r}"

    return rule


def _listed(i: int, col: str, values: list[Any]) -> Callable[[Row], str | None]:
    allowed = {_hashable(v) for v in values}

    def rule(r: Row) -> str | None:
        v = r[i]
        if v is None or _hashable(v) in allowed:
            return None
        return f"in_list: {col}={v!r} is not allowed"

    return rule


def _unique(i: int, col: str) -> Callable[[Row], str | None]:
    seen: set[Any] = set()

    def rule(r: Row) -> str | None:
        v = _hashable(r[i])
        if v in seen:
            return f"unique: {col}={r[i]!r} was seen before"
        if v is not None:
            seen.add(v)
        return None

    return rule


# ---- fused row-wise stages -------------------------------------------------------------
#
# Consecutive row-wise stages (cast, filter, derive, select/drop, rename) run as ONE
# loop per batch instead of one pass (and one list) per stage. The loop is generated
# once per run from fixed templates: only integer positions and names bound to this
# run's objects appear in it (user text never does; expressions stay compiled closures).
# Per-stage counters are kept exact: each stage counts the rows it drops (filtered out
# or rejected) and read/written follow from those counts.

_FUSABLE = (_Cast, _Filter, _Derive, _Reorder, _Rename)


class Runner:
    """Maps a batch through one or more stages, keeping their counters."""

    def run(self, rows: Batch, rejects: RejectSink) -> Batch:
        raise NotImplementedError


class _Single(Runner):
    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def run(self, rows: Batch, rejects: RejectSink) -> Batch:
        counters = self.stage.counters
        counters.read += len(rows)
        rows = self.stage.process(rows, rejects)
        counters.written += len(rows)
        return rows


def _strict_cast(stage: _Cast) -> Callable[[Row, RejectSink], bool]:
    steps = stage.strict
    counters, columns = stage.counters, stage.columns

    def cast(r: Row, rejects: RejectSink) -> bool:
        try:
            for i, col, conv in steps:
                try:
                    r[i] = conv(r[i])
                except CastError as exc:
                    raise CastError(f"cast {col}: {exc}") from None
        except CastError as exc:
            rejects.add(counters, columns, r, str(exc))
            return False
        return True

    return cast


class _Fused(Runner):
    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        ns: dict[str, Any] = {"EvalError": EvalError}
        body: list[str] = []
        for k, stage in enumerate(self.stages):
            drop = f"d{k} += 1; continue"
            if isinstance(stage, _Cast):
                ns[f"S{k}"] = _strict_cast(stage)
                if stage.fast is not None:
                    body.append("try:")
                    for j, (i, conv) in enumerate(stage.fast):
                        ns[f"F{k}_{j}"] = conv
                        body.append(f"    r[{int(i)}] = F{k}_{j}(r[{int(i)}])")
                    body.append("except (ValueError, TypeError, OverflowError):")
                    body.append(f"    if not S{k}(r, rejects): {drop}")
                else:
                    body.append(f"if not S{k}(r, rejects): {drop}")
            elif isinstance(stage, _Filter):
                ns[f"P{k}"], ns[f"C{k}"], ns[f"K{k}"] = stage.pred, stage.counters, stage.columns
                general = [
                    "try:",
                    f"    if not P{k}(r): {drop}",
                    "except EvalError as exc:",
                    f"    rejects.add(C{k}, K{k}, r, f'filter: {{exc}}'); {drop}",
                ]
                fast = _inline(stage.shape, k, ns)
                if fast is None:
                    body += general
                else:
                    # Numbers take the inlined comparison; anything else
                    # (null, text, bool) the compiled closure.
                    body += [
                        f"x = r[{fast[0]}]",
                        "if type(x) is float or type(x) is int:",
                        f"    if not ({fast[1]}): {drop}",
                        "else:",
                        *(f"    {line}" for line in general),
                    ]
            elif isinstance(stage, _Derive):
                ns[f"P{k}"], ns[f"C{k}"], ns[f"K{k}"] = stage.fn, stage.counters, stage.in_columns
                ns[f"M{k}"] = f"derive {stage.columns[-1]}: "
                general = [
                    "try:",
                    f"    v = P{k}(r)",
                    "except EvalError as exc:",
                    f"    rejects.add(C{k}, K{k}, r, M{k} + str(exc)); {drop}",
                ]
                fast = _inline(stage.shape, k, ns)
                if fast is None:
                    body += general
                else:
                    body += [
                        f"x, y = r[{fast[0]}], r[{fast[2]}]",
                        "if (type(x) is float or type(x) is int) and "
                        "(type(y) is float or type(y) is int):",
                        f"    v = {fast[1]}",
                        "else:",
                        *(f"    {line}" for line in general),
                    ]
                body.append("r.append(v)" if stage.index is None else f"r[{int(stage.index)}] = v")
            elif isinstance(stage, _Reorder):
                body.append("r = [" + ", ".join(f"r[{int(i)}]" for i in stage.indexes) + "]")
        n = len(self.stages)
        lines = [
            "def run(rows, rejects):",
            "    out = []",
            "    append = out.append",
            *(f"    d{k} = 0" for k in range(n)),
            "    for r in rows:",
            *(f"        {line}" for line in body),
            "        append(r)",
            "    return out, (" + "".join(f"d{k}, " for k in range(n)) + ")",
        ]
        # Only ints (formatted through int()) and fixed names are in this text.
        exec(compile("\n".join(lines), "<pipeline fused stages>", "exec"), ns)
        self._fn: Callable[[Batch, RejectSink], tuple[Batch, tuple[int, ...]]] = ns["run"]

    def run(self, rows: Batch, rejects: RejectSink) -> Batch:
        count = len(rows)
        out, dropped = self._fn(rows, rejects)
        for stage, d in zip(self.stages, dropped, strict=True):
            stage.counters.read += count
            count -= d
            stage.counters.written += count
        return out


_INLINE_OPS = {"cmp": ("<", "<=", ">", ">="), "arith": ("+", "-", "*")}


def _inline(shape: Shape | None, k: int, ns: dict[str, Any]) -> tuple[int, str, int] | None:
    """Source text for an expression's numeric shape (see
    ``Expression.shape``): (first column, the expression on ``x``/``y``,
    second column). Only whitelisted operators and ints reach the text; a
    constant goes through the namespace."""
    if shape is None:
        return None
    kind, op, i, other = shape
    if kind not in _INLINE_OPS or op not in _INLINE_OPS[kind]:
        return None
    if kind == "cmp":
        ns[f"Q{k}"] = other
        return int(i), f"x {op} Q{k}", -1
    return int(i), f"x {op} y", int(other)


def fuse(stages: Sequence[Stage]) -> list[Runner]:
    """Runners for ``stages``: runs of row-wise stages fused into one loop each."""
    out: list[Runner] = []
    group: list[Stage] = []
    for stage in stages:
        if isinstance(stage, _FUSABLE):
            group.append(stage)
            continue
        if group:
            out.append(_Fused(group))
            group = []
        out.append(_Single(stage))
    if group:
        out.append(_Fused(group))
    return out
