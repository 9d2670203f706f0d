"""Operational events on PostgreSQL: written in the transaction of the change they report
(webhookd/queue/operational.py decides what to report), as events the scanner enqueues
like any other. Every webhook whose state a report depends on is locked first, so that
with several daemons each change is reported by exactly one of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from webhookd.events import NewEvent
from webhookd.queue import operational as op
from webhookd.states import Status
from webhookd.store.base import Outcome
from webhookd.store.postgres import fifo
from webhookd.store.postgres.common import db_now
from webhookd.store.postgres.queries import query
from webhookd.store.records import naive_utc

# asyncpg's connection (the package has no type information).
Connection = Any


async def write(con: Connection, events: list[NewEvent]) -> None:
    if not events:
        return
    await con.fetch(
        query("ingest"),
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.payload for e in events],
        [e.body for e in events],
        [naive_utc(e.occurred_at) for e in events],
        [e.tenant for e in events],
        [e.traceparent for e in events],
    )


def _hook(row: Any) -> op.Webhook:
    return op.Webhook(row["webhook_id"], row["tenant"], list(row["event_types"]))


def _tally(row: Any) -> op.DeadTally:
    return op.DeadTally(
        row["dead_count"],
        row["dead_first_event"],
        row["dead_last_event"],
        row["dead_first_at"],
        row["dead_reported_at"],
    )


async def _save_tally(con: Connection, webhook_id: str, tally: op.DeadTally) -> None:
    await con.execute(
        query("operational_tally_set"),
        webhook_id,
        tally.count,
        tally.first_event_id,
        tally.last_event_id,
        tally.first_at,
        tally.reported_at,
    )


def reportable(outcomes: Sequence[Outcome]) -> bool:
    return any(o.deactivate_webhook or o.status == Status.DEAD for o in outcomes)


async def record(
    con: Connection,
    outcomes: list[Outcome],
    apply: Callable[[Connection, list[Outcome]], Awaitable[Any]],
) -> tuple[Any, int]:
    """Record a batch of outcomes (`apply`: the record statement) with what it reports, in
    one transaction; then settle the order of its fifo webhooks. The record statement's
    row, and the fifo heads the settling promoted."""
    promoted = 0
    async with con.transaction():
        now = await db_now(con)
        made = await before_outcomes(con, outcomes, now)
        row = await apply(con, outcomes)
        made += await after_outcomes(con, outcomes, now)
        await write(con, made)
        if row["fifo"]:
            promoted = await fifo.settle(con, row["fifo"])
    return row, promoted


async def before_outcomes(
    con: Connection, outcomes: Sequence[Outcome], now: datetime
) -> list[NewEvent]:
    """Deactivate the webhooks a 410 answered (before the record statement, which then
    parks their rows), and the events reporting it. The row lock makes one daemon the one
    that deactivates, and reports."""
    gone = list({o.webhook_id for o in outcomes if o.deactivate_webhook})
    if not gone:
        return []
    rows = await con.fetch(query("record_gone"), gone, now)
    if not rows:
        return []
    made: list[NewEvent] = []
    for row in rows:
        made += op.disabled(_hook(row), row["disabled_reason"], now)
    return made


async def after_outcomes(
    con: Connection, outcomes: Sequence[Outcome], now: datetime
) -> list[NewEvent]:
    """The rows this transaction's record statement made dead (updated at its clock),
    tallied per webhook and reported at most once a window."""
    dead = [o for o in outcomes if o.status == Status.DEAD]
    if not dead:
        return []
    rows = await con.fetch(
        query("operational_dead"),
        [o.webhook_id for o in dead],
        [o.event_id for o in dead],
    )
    went: dict[str, list[str]] = {}
    for r in rows:
        went.setdefault(r["webhook_id"], []).append(r["event_id"])
    made: list[NewEvent] = []
    for row in await con.fetch(query("operational_tallies"), sorted(went)):
        # In the order the batch recorded them: the first and last ids reported.
        order = {o.event_id: i for i, o in enumerate(dead)}
        ordered = sorted(went[row["webhook_id"]], key=order.__getitem__)
        tally = op.tally_dead(_tally(row), ordered, now)
        tally, events = op.report_dead(_hook(row), tally, now)
        await _save_tally(con, row["webhook_id"], tally)
        made += events
    return made


async def upkeep(
    con: Connection, disabled: Sequence[Any], failing_before: datetime | None, now: datetime
) -> None:
    """In the auto-disable transaction: the webhooks it disabled (rows with webhook_id,
    tenant, event_types, disabled_reason), recovered and failing episodes (failing since
    before `failing_before`; None: none reported), dead deliveries whose window passed."""
    made: list[NewEvent] = []
    for row in disabled:
        made += op.disabled(_hook(row), row["disabled_reason"], now)
    for row in await con.fetch(query("operational_recovered")):
        made += op.recovered(_hook(row), row["failing_reported"], now)
        await con.execute(query("operational_failing_set"), row["webhook_id"], None)
    if failing_before is not None:
        for row in await con.fetch(query("operational_failing"), naive_utc(failing_before)):
            made += op.failing(_hook(row), row["failing_since"], now)
            # The row is locked: its failing_since as read is the one stored.
            await con.execute(
                query("operational_failing_set"), row["webhook_id"], row["failing_since"]
            )
    for row in await con.fetch(query("operational_dead_due"), now - op.DEAD_WINDOW):
        tally, events = op.report_dead(_hook(row), _tally(row), now)
        await _save_tally(con, row["webhook_id"], tally)
        made += events
    await write(con, made)


async def enabled(con: Connection, webhook_id: str, now: datetime) -> None:
    # Locked already: update_webhook, the caller, read it FOR UPDATE.
    row = await con.fetchrow(query("operational_tallies"), [webhook_id])
    if row is not None:
        await write(con, op.enabled(_hook(row), now))
