"""Fifo webhooks on the DuckDB engine: one due row at a time, the head (lowest seq)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from webhookd.store.duckdb.common import remembered
from webhookd.store.duckdb.queries import query


def fifo_ids(con: Any, webhook_ids: Sequence[str] | None = None) -> list[str]:
    """The fifo webhooks among `webhook_ids` (all of them if None)."""
    if webhook_ids is not None and not webhook_ids:
        return []
    fifo = remembered(con, "fifo", _read_fifo)
    return sorted(fifo if webhook_ids is None else fifo.intersection(webhook_ids))


def _read_fifo(con: Any) -> frozenset[str]:
    return frozenset(r[0] for r in con.execute(query("fifo_webhooks")).fetchall())


def settle_fifo(con: Any, webhook_ids: Sequence[str] | None, now: datetime) -> None:
    """Restore the order of the fifo webhooks among `webhook_ids` (every fifo webhook if
    None) after their rows changed: the head, the lowest seq of a webhook's pending and
    inflight rows, is the only row of it that may be due; its other pending rows wait
    with no next_attempt_at. A head that waits is made due now (promoted); a pending row
    behind the head that has a time loses it (a lower seq came back: redrive, replay).
    Rows already inflight stay so: a head behind them waits until they have an outcome
    (the claim gives a fifo webhook nothing while one of its rows is inflight)."""
    fifo = fifo_ids(con, webhook_ids)
    if not fifo:
        return
    con.execute(query("fifo_settle"), [now, now, fifo])
