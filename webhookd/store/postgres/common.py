"""Pieces every part of the PostgreSQL engine uses: the clock, parking, notifications."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

# MATCHES: where bench/pgserver.py has always read it.
from webhookd.store.postgres.queries import MATCHES as MATCHES
from webhookd.store.postgres.queries import query


async def db_now(con: Any) -> datetime:
    """The database's clock, which decides every time on a shared queue (daemons' clocks
    may drift apart): now(), UTC without a time zone, as the tables keep it."""
    now: datetime = await con.fetchval(query("now"))
    return now


def channel(schema: str, kind: str) -> str:
    """The NOTIFY channel of one kind of work ("events", "deliveries") in one schema."""
    return f"{schema}.{kind}"


async def notify(con: Any, kind: str) -> None:
    """Wake every daemon on this schema waiting for `kind` of work (sent at commit)."""
    await con.execute(query("notify"), kind)


async def park_inactive(con: Any, webhook_ids: Sequence[str], now: datetime) -> int:
    """Pending rows of webhooks that are inactive or gone become parked (Event.DISABLE)."""
    if not webhook_ids:
        return 0
    result: str = await con.execute(
        query("park_inactive"),
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
