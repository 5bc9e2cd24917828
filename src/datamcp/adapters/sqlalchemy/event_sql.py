"""The event store's hot statements, built once (each runs through the unit
of work's executor), and its rows as core records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Float,
    String,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)

from datamcp.adapters.sqlalchemy.executor import in_list, insert_ignoring
from datamcp.adapters.sqlalchemy.tables import dead_letters, deliveries, events, subscriptions
from datamcp.core.events.model import Event, EventFilter, Subscription

#: Advisory lock key serialising event appends on PostgreSQL ("dmcpevts").
_APPEND_LOCK = 0x646D63706576747

_EVENT_COLUMNS = (
    "tenant",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "correlation_id",
    "traceparent",
    "stored_at",
)


# --- statements of the hot paths, built once ------------------------------------------


def _claim_statement(ordered: bool, *, skip_locked: bool) -> Any:
    """Lease visible deliveries that head their subject (see ``claim``).

    With ``skip_locked`` (PostgreSQL) the candidates are picked in a CTE
    with ``FOR UPDATE SKIP LOCKED``: competitors (consumers on other
    replicas) pass over rows another claim or ack holds instead of waiting
    for them, so there are no lock waits and no deadlocks with the
    subscription row a materialiser holds. (In an ``IN (...)`` subquery
    PostgreSQL would not honour the LIMIT together with the lock.) SQLite has
    one writer and no row locks: the plain subquery.
    """
    d = deliveries.c
    # Aliases keep the subqueries from correlating to the UPDATE's own table.
    cand = deliveries.alias("cand")
    earlier = deliveries.alias("earlier")
    pick = select(cand.c.seq).where(
        cand.c.subscription_id == bindparam("sub_id"), cand.c.visible_at <= bindparam("now")
    )
    if ordered:
        blocked = (
            exists()
            .where(
                earlier.c.subscription_id == cand.c.subscription_id,
                earlier.c.subject == cand.c.subject,
                earlier.c.seq < cand.c.seq,
            )
            .correlate(cand)
        )
        pick = pick.where((cand.c.subject == "") | ~blocked)
    pick = pick.order_by(cand.c.seq).limit(bindparam("limit"))
    if skip_locked:
        picked = pick.with_for_update(skip_locked=True, of=cand).cte("picked")
        chosen = d.seq == picked.c.seq
    else:
        chosen = d.seq.in_(pick)
    # Rows with no attempts left are not leased, only reported (their
    # consumer comes back NULL) so the caller can bury them. The visibility
    # re-check makes the claim atomic between competitors.
    live = d.attempts < bindparam("max_attempts")
    return (
        update(deliveries)
        .where(d.subscription_id == bindparam("sub_id"), chosen, d.visible_at <= bindparam("now"))
        .values(
            visible_at=case((live, bindparam("until", type_=Float)), else_=d.visible_at),
            consumer=case((live, bindparam("consumer", type_=String)), else_=None),
            attempts=case((live, d.attempts + 1), else_=d.attempts),
        )
        .returning(d.seq, d.attempts, d.consumer)
    )


def _read_after_cursor_statement(all_tenants: bool, *, postgres: bool) -> Any:
    """The subscription's cursor and up to ``limit`` events after it, in one
    statement; no row when the subscription does not exist.

    On PostgreSQL the subscription's row is read ``FOR NO KEY UPDATE`` (the
    lock the cursor's own update takes), so the materialisers of one
    subscription (its consumers, on any replica) take turns: a second one
    waits for the first to commit and reads on from the cursor the first
    moved (the locked row's new version), instead of reading the same page
    for nothing. Nothing else waits for it: acks, nacks, dead letters and
    redrives never lock the subscription's row. The page is a LATERAL subquery so it stops at
    ``limit`` rows of the seq index, however far a subscription lags. SQLite
    (writers take turns, no LATERAL) walks the (tenant, seq) index in order
    under a plain join, which stops at ``limit`` by itself.
    """
    sub = subscriptions.c
    cursor_of = select(sub.cursor).where(sub.id == bindparam("sub_id"))
    cursor_rows: Any = (
        cursor_of.with_for_update(key_share=True).cte("locked")
        if postgres
        else cursor_of.subquery("locked")
    )
    e = events.c
    after = e.seq > cursor_rows.c.cursor
    if not all_tenants:
        after = and_(after, e.tenant == bindparam("tenant"))
    if postgres:
        page = select(events).where(after).order_by(e.seq).limit(bindparam("limit")).lateral()
        return select(cursor_rows.c.cursor.label("sub_cursor"), page).select_from(
            cursor_rows.outerjoin(page, true())
        )
    return (
        select(cursor_rows.c.cursor.label("sub_cursor"), events)
        .select_from(cursor_rows.outerjoin(events, after))
        .order_by(e.seq)
        .limit(bindparam("limit"))
    )


EXISTING = select(events.c.id, events.c.seq).where(
    events.c.tenant == bindparam("tenant"), in_list(events.c.id, "ids")
)
BY_SEQS = select(events).where(in_list(events.c.seq, "seqs"))
MAX_SEQ = select(func.max(events.c.seq))
APPEND_TURN = select(func.pg_advisory_xact_lock(_APPEND_LOCK))
_EVENT_VALUES: dict[str, Any] = {name: bindparam(name) for name in _EVENT_COLUMNS}
#: Stores an event unless its (tenant, id) is stored; returns what it stored.
APPEND = (
    insert_ignoring(events, "tenant", "id")
    .values(_EVENT_VALUES)
    .returning(events.c.tenant, events.c.id, events.c.seq)
)
#: SQLite's batch insert, of events known not to be stored.
INSERT_NEW = insert(events).values(_EVENT_VALUES)
ADVANCE_CURSOR = (
    update(subscriptions)
    .where(subscriptions.c.id == bindparam("sub_id"), subscriptions.c.cursor == bindparam("read"))
    .values(cursor=bindparam("seq"))
)
ADD_DELIVERY = insert_ignoring(deliveries).values(
    subscription_id=bindparam("sub_id"),
    seq=bindparam("seq"),
    subject=bindparam("subject"),
    attempts=literal_column("0"),
    visible_at=literal_column("0.0"),
)
DELETE_DELIVERIES = delete(deliveries).where(
    deliveries.c.subscription_id == bindparam("sub_id"), in_list(deliveries.c.seq, "seqs")
)
#: By "skips locked rows" (PostgreSQL), then by ``ordered``.
CLAIM = {
    skip_locked: {
        ordered: _claim_statement(ordered, skip_locked=skip_locked) for ordered in (True, False)
    }
    for skip_locked in (True, False)
}
#: By PostgreSQL or not, then by "all tenants".
READ_AFTER_CURSOR = {
    postgres: {
        every: _read_after_cursor_statement(every, postgres=postgres) for every in (True, False)
    }
    for postgres in (True, False)
}
INSERT_SUBSCRIPTION = insert_ignoring(subscriptions)
INSERT_DEAD_LETTERS = insert_ignoring(dead_letters)


def event_row(e: Event, stored_at: float) -> dict[str, Any]:
    """An event's column values, by ``_EVENT_COLUMNS`` name."""
    return {
        "tenant": e.tenant,
        "id": e.id,
        "source": e.source,
        "type": e.type,
        "subject": e.subject,
        "time": e.time,
        "datacontenttype": e.datacontenttype,
        "data": e.data_json(),
        "correlation_id": e.correlation_id,
        "traceparent": e.traceparent,
        "stored_at": stored_at,
    }


#: ``to_event`` unpacks the values of a ``select(events)`` row by position
#: (several times cheaper than by name, on the delivery path); the column
#: order it relies on, checked here so a schema change cannot go unnoticed.
EVENT_ROW = ("seq", *_EVENT_COLUMNS)
if tuple(events.c.keys()) != EVENT_ROW:
    raise RuntimeError("the events table's columns changed: update event_sql.to_event")


def to_event(values: Sequence[Any]) -> Event:
    """An event from its row's values in ``EVENT_ROW`` order."""
    (
        seq,
        tenant,
        id_,
        source,
        type_,
        subject,
        time_,
        content_type,
        data,
        correlation_id,
        traceparent,
        _stored_at,
    ) = values
    return Event(
        id=id_,
        source=source,
        type=type_,
        data=json.loads(data),
        subject=subject,
        time=time_,
        datacontenttype=content_type,
        tenant=tenant,
        correlation_id=correlation_id,
        traceparent=traceparent,
        seq=seq,
    )


def to_subscription(row: Any) -> Subscription:
    return Subscription(
        id=row.id,
        tenant=row.tenant,
        name=row.name,
        filter=EventFilter.from_json(row.filter),
        cursor=row.cursor,
        max_attempts=row.max_attempts,
        visibility_timeout=row.visibility_timeout,
        created_at=row.created_at,
        ordered=row.ordered,
    )
