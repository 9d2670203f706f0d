"""Pieces every part of the PostgreSQL engine uses: states in SQL, parking, notifications."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webhookd.states import Event, Status, sources

Q = "webhook_delivery_queue"
# An active webhook takes an event of its own tenant (none: of none) when it lists its type,
# or lists no type at all (webhookd's own operational events, webhookd.*, only when listed).
# The tenant as coalesce(tenant, '') on both sides: one equality,
# served by the index webhooks_tenant_active (a look-up per event, not a pass over every
# tenant's webhooks).
MATCHES = (
    "w.active AND coalesce(w.tenant, '') = coalesce(e.tenant, '') "
    "AND ((cardinality(w.event_types) = 0 AND NOT starts_with(e.event_type, 'webhookd.')) "
    "OR e.event_type = ANY (w.event_types))"
)
# The database's clock, as the tables keep time: UTC without a time zone.
NOW = "(now() AT TIME ZONE 'UTC')"


async def db_now(con: Any) -> datetime:
    """The database's clock, which decides every time on a shared queue (daemons' clocks
    may drift apart): now(), UTC without a time zone, as the tables keep it."""
    now: datetime = await con.fetchval(f"SELECT {NOW}")
    return now


def in_states(statuses: Sequence[Status]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


def channel(schema: str, kind: str) -> str:
    """The NOTIFY channel of one kind of work ("events", "deliveries") in one schema."""
    return f"{schema}.{kind}"


async def notify(con: Any, kind: str) -> None:
    """Wake every daemon on this schema waiting for `kind` of work (sent at commit)."""
    await con.execute(f"SELECT pg_notify(current_schema() || '.{kind}', '')")


async def park_inactive(con: Any, webhook_ids: Sequence[str], now: datetime) -> int:
    """Pending rows of webhooks that are inactive or gone become parked (Event.DISABLE)."""
    if not webhook_ids:
        return 0
    result: str = await con.execute(
        f"""
        UPDATE {Q} q SET status = '{Status.PARKED}', lease_until = NULL, claimed_by = NULL,
            updated_at = $1
        WHERE q.status IN {in_states(sources(Event.DISABLE))}
          AND q.webhook_id = ANY ($2::text[])
          AND NOT EXISTS (SELECT 1 FROM webhooks w
                          WHERE w.webhook_id = q.webhook_id AND w.active)
        """,
        now,
        list(set(webhook_ids)),
    )
    return int(result.split()[-1])


async def stop_task(task: asyncio.Task[Any] | None, within: float) -> bool:
    """Cancel a background task and wait for it at most `within` seconds; whether it
    ended. Never awaits the task itself: a cancellation can be lost on the way (Python
    3.11's asyncio.wait_for drops it when its inner call completes at the same moment),
    and awaiting such a task would hang a shutdown. The tasks also check a stop flag."""
    if task is None or task.done():
        return True
    task.cancel()
    await asyncio.wait([task], timeout=within)
    return task.done()
