"""PostgreSQL: the order of fifo webhooks, kept in the transactions that change their rows.

A fifo webhook's head is the lowest seq of its pending and inflight rows; the head is the
only row of it that may be due, the others wait with no next_attempt_at (so no claim reads
them, however many). Every transaction that changes such rows (an outcome, a scan, a
release or rescue, redrive, replay, enable, a switch to fifo) ends with `settle`: the
webhooks are locked one by one (fifo_lock, in one order), then fifo_settle promotes each
head that waits and demotes any other row with a time. The lock makes settles of one
webhook take turns, each seeing what the ones before it committed, so that two of them
(say an outcome that finished the head on one daemon and a scan that enqueued the next
event on another) can never both miss the row to promote. The leader also settles every
fifo webhook with each lease rescue, as a safety net.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from webhookd.store.base import FifoBlocked
from webhookd.store.postgres.queries import query

Connection = Any  # asyncpg has no type stubs


async def settle(con: Connection, webhook_ids: Iterable[str | None] | None) -> int:
    """Restore the order of the fifo webhooks among `webhook_ids` (all of them if None), in
    the caller's transaction; the number of heads promoted."""
    if webhook_ids is None:
        wanted = [r[0] for r in await con.fetch(query("fifo_webhooks"))]
    else:
        wanted = sorted({w for w in webhook_ids if w is not None})
    if not wanted:
        return 0
    locked = [r["webhook_id"] for r in await con.fetch(query("fifo_lock"), wanted)]
    if not locked:
        return 0
    row = await con.fetchrow(query("fifo_settle"), locked)
    return int(row["n"])


async def blocked(con: Connection) -> dict[str, FifoBlocked]:
    """Fifo webhooks whose head has failed, for status."""
    return {
        r["webhook_id"]: FifoBlocked(r["event_id"], r["since"], r["attempts"])
        for r in await con.fetch(query("fifo_blocked"))
        if r["since"] is not None
    }
