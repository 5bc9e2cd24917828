"""A pipeline's transforms bound to the source's columns: a plan of
*chains* (row-wise stages fused into one DuckDB relation per batch) and
*barriers* (stages that need all their input first: aggregate, sort).

Every row carries two status columns through a chain: ``__at`` (the index of
the stage that stopped it, null while it is alive) and ``__why`` (the reason
when that stage rejected it; null when a filter or dedupe dropped it). A
stage's error conditions only apply to rows still alive, so each row is
counted once, by the stage that stopped it: per-stage counters always add up
and every rejected row keeps its reason, found vectorised.

Physical column names in the engine are ``_N`` (never the caller's names,
which only appear as labels); ``__rid`` numbers the rows in order, for
first-wins dedupe, stable sorts and first-seen group order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from duckdb import StarExpression

from datamcp.core.errors import FieldViolation
from datamcp.core.pipelines.expr import ExprError, parse
from datamcp.core.pipelines.exprc import C, Expr, K, Typed, when
from datamcp.core.pipelines.exprcompile import Compiler
from datamcp.core.pipelines.model import Reject, StageCounters

VARCHAR = duckdb.sqltypes.VARCHAR
Rel = duckdb.DuckDBPyRelation
Step = Callable[[Rel], Rel]
RID = "__rid"
AT = "__at"
WHY = "__why"
REJECTED = "__rj"  # WHY is not null: a reject (else a filter or dedupe dropped the row)
N = "__n"


@dataclass(slots=True)
class Layout:
    """The logical columns at a point of the plan, their physical names and types."""

    cols: list[str]
    phys: dict[str, str]
    kinds: dict[str, str]

    def copy(self) -> Layout:
        return Layout(list(self.cols), dict(self.phys), dict(self.kinds))

    def binding(self) -> dict[str, tuple[str, str]]:
        return {c: (self.phys[c], self.kinds[c]) for c in self.cols}


@dataclass(slots=True)
class RejectSink:
    """Counts every rejected row; keeps the first ``keep`` with their reasons."""

    keep: int = 1000
    pending: list[Reject] = field(default_factory=list)
    kept: int = 0
    total: int = 0

    def add(self, stage: StageCounters, reason: str, row: dict[str, Any], number: int = 0) -> None:
        stage.rejected += 1
        self.total += 1
        if self.kept < self.keep:
            self.kept += 1
            self.pending.append(Reject(stage.stage, reason[:1000], row, number))

    def count(self, stage: StageCounters, n: int) -> None:
        """``n`` more rejected rows of ``stage`` whose rows are not kept."""
        stage.rejected += n
        self.total += n

    def room(self) -> int:
        return self.keep - self.kept

    def take(self) -> list[Reject]:
        out, self.pending = self.pending, []
        return out


@dataclass(slots=True)
class StageInfo:
    counters: StageCounters
    before: Layout  # the row as this stage reads it, for rejects
    after_key: str = ""  # a column whose keys must be remembered after the batch


_COLUMN = re.compile(r'"(_[^"]*)"')


def columns_of(*exprs: Expr) -> set[str]:
    """The physical columns an expression reads (from its rendering: only
    our own ``_N`` names are double-quoted there)."""
    return {name for e in exprs for name in _COLUMN.findall(str(e))}


class Chain:
    """Row-wise stages run as one relation per batch. Only the columns the
    stages read go through DuckDB; the others stay in the Arrow batch."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.stages: list[StageInfo] = []
        self.steps: list[Step] = []
        self.after: list[Callable[[pa.Table], None]] = []
        self.uses: set[str] = set()
        self.windowed = False  # a stage joins or numbers rows (lookup, dedupe, unique)

    def run(self, table: pa.Table, sink: RejectSink) -> pa.Table:
        """The batch's rows alive after every stage (stage counters and
        rejects updated)."""
        inputs = [c for c in table.column_names if c in self.uses or c == RID]
        rel = self.start(self.con.from_arrow(table.select(inputs)))
        computed = self.apply(rel).to_arrow_table()
        if not computed.column(RID).equals(table.column(RID)):
            computed = computed.sort_by(RID)
        out = table
        for name in computed.column_names:
            if name not in table.column_names:
                out = out.append_column(name, computed.column(name))
        for hook in self.after:
            hook(out)
        return self.account(out, sink)

    def apply(self, rel: Rel) -> Rel:
        """The stages over ``rel`` (which has the status columns)."""
        for step in self.steps:
            rel = step(rel)
        return rel

    def start(self, rel: Rel) -> Rel:
        """``rel`` with the status columns every row starts with."""
        return rel.select(
            StarExpression(),
            K(None).cast(duckdb.sqltypes.INTEGER).alias(AT),
            K(None).cast(VARCHAR).alias(WHY),
        )

    def account(self, out: pa.Table, sink: RejectSink) -> pa.Table:
        """Counts and rejects of rows that went through the stages; the
        rows still alive, without the status columns."""
        at = out.column(AT)
        alive = pc.is_null(at)
        count = out.num_rows
        for k, info in enumerate(self.stages):
            stopped = int(pc.sum(pc.equal(at, k)).as_py() or 0)
            info.counters.read += count
            count -= stopped
            info.counters.written += count
        if count != out.num_rows:
            self._rejects(out, sink)
        return out.filter(alive).drop_columns([AT, WHY])

    def _rejects(self, out: pa.Table, sink: RejectSink) -> None:
        why = out.column(WHY)
        rejected = out.filter(pc.is_valid(why))
        if rejected.num_rows == 0:
            return
        keep = rejected.slice(0, max(0, sink.room()))
        for row in keep.to_pylist():
            info = self.stages[row[AT]]
            values = {
                c: row[info.before.phys[c]] for c in info.before.cols if info.before.phys[c] in row
            }
            sink.add(info.counters, row[WHY], values)
        rest = rejected.column(AT).slice(keep.num_rows)
        for k, info in enumerate(self.stages):
            n = int(pc.sum(pc.equal(rest, k)).as_py() or 0)
            if n:
                sink.count(info.counters, n)
        # (kept rejects counted by sink.add; the rest counted above)


class Barrier:
    """A stage that sees all its input before it answers (aggregate, sort):
    rows go into a DuckDB table (which spills to disk past the memory
    limit); ``finish`` streams the result."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        counters: StageCounters,
        table: str,
        columns: Sequence[str],
        *,
        counted: bool,
    ) -> None:
        self.con = con
        self.counters = counters
        self.table = table
        self.columns = list(columns)
        self.counted = counted  # False: a row-wise stage counted the rows read
        self.created = False
        self.partial: Callable[[Rel], Rel] = lambda r: r
        self.result: Callable[[Rel], Rel] = lambda r: r
        # The partial grouped by more columns too, with a row count (``N``):
        # lets a scan aggregate its rows in the same pass that checks them.
        self.grouped: Callable[[Rel, Sequence[str]], Rel] | None = None

    def push(self, table: pa.Table) -> None:
        if self.counted:
            self.counters.read += table.num_rows
            self.counters.written += table.num_rows
        rel = self.partial(self.con.from_arrow(table.select(self.columns)))
        if self.created:
            rel.insert_into(self.table)
        else:
            rel.create(self.table)
            self.created = True

    def push_relation(self, rel: Rel, rows: int) -> None:
        """All the barrier's input at once, as a relation of ``rows`` rows."""
        if self.counted:
            self.counters.read += rows
            self.counters.written += rows
        self.partial(rel.select(*[C(c) for c in self.columns])).create(self.table)
        self.created = True

    def adopt(self, rel: Rel, rows: int) -> None:
        """``rel``, the output of ``grouped`` for the rows alive (``rows``),
        as the partials (the extra group columns dropped)."""
        if self.counted:
            self.counters.read += rows
            self.counters.written += rows
        rel.select(StarExpression(exclude=[AT, REJECTED, N])).create(self.table)
        self.created = True

    def finish(self, rows_per_batch: int) -> Iterator[pa.Table]:
        self.counters.written = 0
        if not self.created:
            return
        reader = self.result(self.con.table(self.table)).to_arrow_reader(rows_per_batch)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            self.counters.written += table.num_rows
            yield table


Segment = Chain | Barrier


class PlanBuilder:
    """What each transform kind's ``build`` works with: the current layout,
    expression compiling, new physical columns, stages and barriers."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        layout: Layout,
        params: Mapping[str, Any],
        lookups: Mapping[int, tuple[str, Layout]],
    ) -> None:
        self.con = con
        self.layout = layout.copy()
        self.params = params
        self.lookups = lookups
        self.problems: list[FieldViolation] = []
        self.segments: list[Segment] = [Chain(con)]
        self._names = itertools.count(len(layout.cols))
        self.index = 0  # the transform being built

    # -- helpers for kinds --------------------------------------------------------

    def new_phys(self) -> str:
        return f"_{next(self._names)}"

    def fail(self, where: str, message: str) -> None:
        self.problems.append(FieldViolation(where, message))

    def need(self, names: Sequence[str], where: str) -> list[str]:
        """The physical names of ``names``; a problem for each unknown one."""
        out = []
        for name in names:
            if name in self.layout.phys:
                out.append(self.layout.phys[name])
            else:
                here = ", ".join(self.layout.cols)
                self.fail(where, f"unknown column {name!r} (columns here: {here})")
        return out

    def expression(self, text: str, where: str) -> Typed | None:
        try:
            return Compiler(self.layout.binding(), self.params).compile(parse(text))
        except ExprError as exc:
            self.fail(where, str(exc))
            return None

    @property
    def chain(self) -> Chain:
        last = self.segments[-1]
        if isinstance(last, Barrier):
            last_chain = Chain(self.con)
            self.segments.append(last_chain)
            return last_chain
        return last

    def stage(
        self,
        name: str,
        values: Mapping[str, Expr] | None = None,
        errors: Sequence[tuple[Expr, Expr]] = (),
        *,
        drop: Expr | None = None,
        prepare: Callable[[Rel], Rel] | None = None,
        uses: Sequence[str] = (),
    ) -> StageInfo:
        """Adds a row-wise stage: new physical ``values``, rows rejected where
        an error condition holds (the first one's reason), rows dropped
        where ``drop`` holds; ``prepare`` (joins, windows) runs first and
        must keep the rows in ``__rid`` order; ``uses`` names the columns
        it reads."""
        chain = self.chain
        chain.windowed |= prepare is not None
        k = len(chain.stages)
        info = StageInfo(StageCounters(name), self.layout.copy())
        chain.stages.append(info)
        values = dict(values or {})
        reason: Expr = K(None).cast(VARCHAR)
        for cond, why in reversed(errors):
            reason = when(cond, why, reason)
        chain.uses |= set(uses) | columns_of(reason, *values.values())
        if drop is not None:
            chain.uses |= columns_of(drop)

        def step(rel: Rel) -> Rel:
            if prepare is not None:
                rel = prepare(rel)
            if values:  # computed first: the error conditions may read them
                rel = rel.select(StarExpression(), *[e.alias(p) for p, e in values.items()])
            rel = rel.select(StarExpression(), reason.alias("__r"))
            alive = C(AT).isnull()
            stop = C("__r").isnotnull()
            if drop is not None:
                stop = stop | drop
            return rel.select(
                StarExpression(exclude=[AT, WHY, "__r"]),
                when(alive & stop, K(k), C(AT)).alias(AT),
                when(alive, C("__r"), C(WHY)).alias(WHY),
            )

        chain.steps.append(step)
        return info

    def barrier(
        self, name: str, columns: Sequence[str], counters: StageCounters | None = None
    ) -> Barrier:
        """A barrier over ``columns`` (physical names); with ``counters`` it
        shares the counters of a row-wise stage of the same transform."""
        b = Barrier(
            self.con,
            counters or StageCounters(name),
            f"__t{self.index}",
            columns,
            counted=counters is None,
        )
        self.segments.append(b)
        return b


def prefixed(errors: Sequence[tuple[Expr, Expr]], prefix: str) -> list[tuple[Expr, Expr]]:
    """Error reasons with a label in front (``derive total: division by zero``)."""
    from datamcp.core.pipelines.exprc import F

    return [(cond, F("concat", K(prefix), reason)) for cond, reason in errors]
