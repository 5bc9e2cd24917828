"""``datamcp events ...``."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import TYPE_CHECKING, Any

from datamcp_client.cli._common import (
    ExitCode,
    Output,
    UsageError,
    add_verb,
    read_json,
    read_text,
)

if TYPE_CHECKING:
    from datamcp_client import Client, Event

EVENT_COLUMNS = ("sequence", "type", "subject", "source", "time", "data")


def _event_line(event: Event) -> str:
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    subject = f" [{event.subject}]" if event.subject else ""
    return f"{event.sequence} {event.type}{subject} {data}"


async def _publish(args: argparse.Namespace, client: Client, out: Output) -> int:
    from datamcp_client import NewEvent

    if args.batch:
        events = []
        for n, line in enumerate(read_text(args.batch, "--batch").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                events.append(
                    NewEvent(
                        type=item["type"],
                        data=item.get("data"),
                        source=item.get("source", args.source),
                        subject=item.get("subject", ""),
                        id=item.get("id"),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(
                    f"--batch line {n}: need a JSON object with a type ({exc})"
                ) from None
        results = await client.events.publish_batch(events)
        out.many(results, ("id", "sequence", "duplicate"))
        return ExitCode.OK
    if not args.type:
        raise UsageError("give an event TYPE, or --batch FILE")
    result = await client.events.publish(
        args.type,
        read_json(args.data, "--data"),
        source=args.source,
        subject=args.subject,
        id=args.id,
    )
    out.one(result)
    return ExitCode.OK


async def _tail(args: argparse.Namespace, client: Client, out: Output) -> int:
    """Follow events until interrupted, acking each one printed."""
    import secrets

    name = args.subscription or f"tail-{secrets.token_hex(4)}"
    subscription = client.events.subscribe(
        name,
        types=args.type or (),
        source=args.source or "",
        subject=args.subject or "",
        start="earliest" if args.from_start else "latest",
        auto_ack=True,
    )
    out.note(f"following {name} (Ctrl-C to stop)")
    try:
        async with subscription:
            async for delivery in subscription:
                out.line(delivery.event, _event_line(delivery.event))
    finally:
        if not args.subscription:  # a throwaway subscription must not hold events back
            with contextlib.suppress(Exception):
                await client.events.delete_subscription(name)
    return ExitCode.OK


async def _replay(args: argparse.Namespace, client: Client, out: Output) -> int:
    async for event in client.events.replay(
        types=args.type or (),
        subject=args.subject or "",
        from_sequence=args.from_sequence,
        limit=args.limit,
    ):
        out.line(event, _event_line(event))
    return ExitCode.OK


async def _subscriptions(args: argparse.Namespace, client: Client, out: Output) -> int:
    items = [s async for s in client.events.subscriptions()]
    out.many(items, ("name", "types", "lag", "pending", "in_flight", "dead_letters"))
    return ExitCode.OK


async def _dead_letters(args: argparse.Namespace, client: Client, out: Output) -> int:
    letters = [d async for d in client.events.dead_letters(args.subscription, limit=args.limit)]
    if out.json:
        out.many(letters, ())
        return ExitCode.OK
    rows = [
        {
            "sequence": d.event.sequence,
            "type": d.event.type,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "dead_time": d.dead_time,
        }
        for d in letters
    ]
    out.many(rows, ("sequence", "type", "attempts", "last_error", "dead_time"))
    return ExitCode.OK


async def _redrive(args: argparse.Namespace, client: Client, out: Output) -> int:
    count = await client.events.redrive(args.subscription, args.seq or ())
    out.one({"subscription": args.subscription, "redriven": count})
    return ExitCode.OK


def add_parsers(sub: Any) -> None:
    events = sub.add_parser("events", help="publish, follow and replay events")
    ev = events.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = add_verb(ev, "publish", _publish, "store an event (or a batch from a JSON Lines file)")
    p.add_argument("type", nargs="?", help="event type, for example order.paid")
    p.add_argument("--data", "-d", help="JSON data, @FILE or - for stdin")
    p.add_argument("--subject", default="", help="what the event is about (ordered per subject)")
    p.add_argument("--source", default="/datamcp-cli", help="producer URI reference")
    p.add_argument("--id", help="event id (a repeated id is stored once)")
    p.add_argument(
        "--batch", metavar="FILE", help='JSON Lines of {"type", "data", "subject", ...}; - = stdin'
    )

    p = add_verb(
        ev,
        "tail",
        _tail,
        "follow events as they are published until Ctrl-C (each printed event is acked)",
    )
    p.add_argument("--type", "-t", action="append", help="type or prefix.* (repeatable)")
    p.add_argument("--source", help="source (prefix with a trailing *)")
    p.add_argument("--subject", help="subject (prefix with a trailing *)")
    p.add_argument(
        "--subscription",
        "-s",
        help="consume this durable subscription (default: a throwaway one, deleted on exit)",
    )
    p.add_argument(
        "--from-start", action="store_true", help="a new subscription starts at the oldest event"
    )

    p = add_verb(ev, "replay", _replay, "print stored events in order, then exit")
    p.add_argument("--type", "-t", action="append", help="type or prefix.* (repeatable)")
    p.add_argument("--subject", help="subject (prefix with a trailing *)")
    p.add_argument("--from-sequence", type=int, default=0, help="only events after this sequence")
    p.add_argument("--limit", type=int, default=0, help="most events (0 = all)")

    add_verb(ev, "subscriptions", _subscriptions, "list subscriptions with their lag")

    p = add_verb(ev, "dead-letters", _dead_letters, "list a subscription's dead letters")
    p.add_argument("subscription")
    p.add_argument("--limit", type=int, default=100)

    p = add_verb(ev, "redrive", _redrive, "send dead letters back for delivery")
    p.add_argument("subscription")
    p.add_argument("--seq", type=int, action="append", help="only this sequence (repeatable)")
