"""GET /v1/status from what an engine reads, assembled once for both engines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from webhookd.store.base import FifoBlocked, StatusReport


def report(
    *,
    now: datetime,
    counts: Iterable[tuple[str, str, int]],
    oldest_due: datetime | None,
    cursor: int,
    latest: int | None,
    lag: int | None,
    webhooks: Iterable[tuple[str, bool, str | None]],
    fifo_blocked: Mapping[str, FifoBlocked],
    tenant: str | None,
    events_rejected: int = 0,
) -> StatusReport:
    """`counts`: (webhook, state, rows) of the queue; `oldest_due` the earliest due time of
    a pending row; `cursor` the scanner's and `latest` the highest event seq it passed or
    has to scan (None: no event), `lag` how many are after the cursor (None: latest -
    cursor, for an engine whose seqs have no gaps the scanner waits on); `webhooks`:
    (webhook, active, disabled_reason). With `tenant`, the engine read that tenant's
    rows and webhooks only, and fifo heads of other webhooks are left out here."""
    result = StatusReport()
    for wid, state, n in counts:
        result.by_status[state] = result.by_status.get(state, 0) + n
        result.by_webhook.setdefault(wid, {})[state] = n
    if oldest_due is not None:
        result.oldest_due_age_seconds = max(0.0, (now - oldest_due).total_seconds())
    result.scanner_cursor = cursor
    result.latest_seq = max(latest or 0, cursor)
    result.scanner_lag_events = max(0, (latest or 0) - cursor) if lag is None else lag
    result.events_rejected = events_rejected
    for wid, active, reason in webhooks:
        if active:
            result.webhooks_active += 1
        else:
            result.disabled_webhooks[wid] = reason
    blocked = dict(fifo_blocked)
    if tenant is not None:
        ids = set(result.by_webhook) | set(result.disabled_webhooks)
        blocked = {wid: b for wid, b in blocked.items() if wid in ids}
    result.fifo_blocked = blocked
    return result
