"""Operational events on DuckDB: written in the writer's transaction of the change they
report (webhookd/queue/operational.py decides what to report).

They are enqueued here, at once, not by the scan: the main writer's transaction takes a
seq from the sequence while the ingest writer may hold a lower one uncommitted, and a scan
that saw this row would move the cursor past that ingest (see store/duckdb/store.py). The
scan skips webhookd.* events, which producers cannot post.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webhookd.events import NewEvent
from webhookd.queue import operational as op
from webhookd.store.base import Outcome
from webhookd.store.duckdb.common import remember, remembered, scanned_seq
from webhookd.store.duckdb.fifo import settle_fifo
from webhookd.store.duckdb.queries import query
from webhookd.store.records import naive_utc


def write(con: Any, events: list[NewEvent], now: datetime) -> None:
    if not events:
        return
    con.execute(
        query("ingest"),
        [
            [e.event_id for e in events],
            [e.event_type for e in events],
            [e.payload for e in events],
            [e.body for e in events],
            [naive_utc(e.occurred_at) for e in events],
            now,
            [e.tenant for e in events],
            [e.traceparent for e in events],
        ],
    )
    ids = [e.event_id for e in events]
    con.execute(query("operational_enqueue"), [now, now, now, ids])
    settle_fifo(con, None, now)
    # The cursor passes them now if nothing lies between it and them: a seq right after the
    # cursor proves no ingest holds a lower one (allocated, not committed). Otherwise a later
    # scan passes them with the events around them.
    start = cursor = remembered(con, "scan_cursor", scanned_seq)
    for (seq,) in con.execute(query("operational_seqs"), [ids]).fetchall():
        if seq != cursor + 1:
            break
        cursor = seq
    if cursor != start:
        con.execute(query("scan_advance"), [cursor, now])
        remember(con, "scan_cursor", cursor)


def _hook(row: Sequence[Any]) -> op.Webhook:
    return op.Webhook(row[0], row[1], list(row[2]))


def _tally(row: Sequence[Any]) -> op.DeadTally:
    return op.DeadTally(row[3] or 0, row[4], row[5], row[6], row[7])


def _save_tally(con: Any, webhook_id: str, tally: op.DeadTally) -> None:
    con.execute(
        query("operational_tally_set"),
        [
            tally.count,
            tally.first_event_id,
            tally.last_event_id,
            tally.first_at,
            tally.reported_at,
            webhook_id,
        ],
    )


def after_outcomes(
    con: Any, outcomes: Sequence[Outcome], gone: Sequence[Sequence[Any]], now: datetime
) -> None:
    """What a batch of outcomes reports: the rows it made dead (tallied, reported at most
    once a window), and the webhooks a 410 deactivated (`gone`: rows of record_gone).
    Deliveries of operational events report nothing."""
    made: list[NewEvent] = []
    for row in gone:
        made += op.disabled(_hook(row), row[3], now)
    dead_ids = [o.event_id for o in outcomes if o.status == "dead"]
    if dead_ids:
        position = {e: i for i, e in enumerate(dead_ids)}
        went: dict[str, list[str]] = {}
        for webhook_id, event_id, operational in con.execute(
            query("operational_dead"), [now, dead_ids]
        ).fetchall():
            if not operational:
                went.setdefault(webhook_id, []).append(event_id)
        if went:
            for row in con.execute(query("operational_tallies"), [list(went)]).fetchall():
                # In the order the batch recorded them: the first and last ids reported.
                ordered = sorted(went[row[0]], key=position.__getitem__)
                tally = op.tally_dead(_tally(row), ordered, now)
                tally, events = op.report_dead(_hook(row), tally, now)
                _save_tally(con, row[0], tally)
                made += events
    write(con, made, now)


def upkeep(
    con: Any, disabled: Sequence[Sequence[Any]], failing_before: datetime | None, now: datetime
) -> None:
    """In the auto-disable tick's transaction: the webhooks it disabled (rows of
    auto_disable), recovered and failing episodes (failing since before `failing_before`;
    None: none reported), and dead deliveries whose window
    has passed."""
    made: list[NewEvent] = []
    for row in disabled:
        made += op.disabled(_hook(row), row[3], now)
    for row in con.execute(query("operational_recovered")).fetchall():
        made += op.recovered(_hook(row), row[3], now)
        con.execute(query("operational_failing_set"), [None, row[0]])
    if failing_before is not None:
        for row in con.execute(query("operational_failing"), [failing_before]).fetchall():
            made += op.failing(_hook(row), row[3], now)
            con.execute(query("operational_failing_set"), [row[3], row[0]])
    for row in con.execute(query("operational_dead_due"), [now - op.DEAD_WINDOW]).fetchall():
        tally, events = op.report_dead(_hook(row), _tally(row), now)
        _save_tally(con, row[0], tally)
        made += events
    write(con, made, now)
