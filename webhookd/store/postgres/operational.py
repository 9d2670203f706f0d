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
_HOOK = "webhook_id, tenant, event_types"
_TALLY = f"{_HOOK}, dead_count, dead_first_event, dead_last_event, dead_first_at, dead_reported_at"


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
        "UPDATE webhooks SET dead_count = $2, dead_first_event = $3, dead_last_event = $4, "
        "dead_first_at = $5, dead_reported_at = $6 WHERE webhook_id = $1",
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
) -> None:
    """Record a batch of outcomes (`apply`: the record statement) with what it reports, in
    one transaction; then settle the order of its fifo webhooks."""
    async with con.transaction():
        now = await db_now(con)
        made = await before_outcomes(con, outcomes, now)
        _, fifo_ids = await apply(con, outcomes)
        made += await after_outcomes(con, outcomes, now)
        await write(con, made)
        if fifo_ids:
            await fifo.settle(con, fifo_ids)


async def before_outcomes(
    con: Connection, outcomes: Sequence[Outcome], now: datetime
) -> list[NewEvent]:
    """Deactivate the webhooks a 410 answered (before the record statement, which then
    parks their rows), and the events reporting it. The row lock makes one daemon the one
    that deactivates, and reports."""
    gone = list({o.webhook_id for o in outcomes if o.deactivate_webhook})
    if not gone:
        return []
    rows = await con.fetch(
        f"""
        UPDATE webhooks SET active = false, updated_at = $2,
            disabled_reason = 'the endpoint answered 410 Gone'
        WHERE active AND webhook_id = ANY ($1::text[])
        RETURNING {_HOOK}, disabled_reason
        """,
        gone,
        now,
    )
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
        """
        SELECT q.webhook_id, q.event_id FROM webhook_delivery_queue q
        JOIN unnest($1::text[], $2::text[]) AS k(webhook_id, event_id)
          ON q.webhook_id = k.webhook_id AND q.event_id = k.event_id
        JOIN pipeline_events e ON e.event_id = q.event_id
        WHERE q.status = 'dead' AND q.updated_at = (now() AT TIME ZONE 'UTC')
          AND NOT starts_with(e.event_type, 'webhookd.')
        """,
        [o.webhook_id for o in dead],
        [o.event_id for o in dead],
    )
    went: dict[str, list[str]] = {}
    for r in rows:
        went.setdefault(r["webhook_id"], []).append(r["event_id"])
    made: list[NewEvent] = []
    for row in await con.fetch(
        f"SELECT {_TALLY} FROM webhooks WHERE webhook_id = ANY ($1::text[]) "
        "ORDER BY webhook_id FOR UPDATE",
        sorted(went),
    ):
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
    for row in await con.fetch(
        f"""
        SELECT {_HOOK}, failing_reported FROM webhooks
        WHERE active AND failing_reported IS NOT NULL
          AND failing_since IS DISTINCT FROM failing_reported
        ORDER BY webhook_id FOR UPDATE
        """
    ):
        made += op.recovered(_hook(row), row["failing_reported"], now)
        await con.execute(
            "UPDATE webhooks SET failing_reported = NULL WHERE webhook_id = $1", row["webhook_id"]
        )
    if failing_before is not None:
        for row in await con.fetch(
            f"""
            SELECT {_HOOK}, failing_since FROM webhooks
            WHERE active AND failing_since IS NOT NULL AND failing_since < $1
              AND failing_reported IS DISTINCT FROM failing_since
            ORDER BY webhook_id FOR UPDATE
            """,
            naive_utc(failing_before),
        ):
            made += op.failing(_hook(row), row["failing_since"], now)
            await con.execute(
                "UPDATE webhooks SET failing_reported = failing_since WHERE webhook_id = $1",
                row["webhook_id"],
            )
    for row in await con.fetch(
        f"""
        SELECT {_TALLY} FROM webhooks
        WHERE dead_count > 0 AND (dead_reported_at IS NULL OR dead_reported_at <= $1)
        ORDER BY webhook_id FOR UPDATE
        """,
        now - op.DEAD_WINDOW,
    ):
        tally, events = op.report_dead(_hook(row), _tally(row), now)
        await _save_tally(con, row["webhook_id"], tally)
        made += events
    await write(con, made)


async def enabled(con: Connection, webhook_id: str, now: datetime) -> None:
    row = await con.fetchrow(f"SELECT {_HOOK} FROM webhooks WHERE webhook_id = $1", webhook_id)
    if row is not None:
        await write(con, op.enabled(_hook(row), now))
