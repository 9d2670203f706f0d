"""Webhook and operator functions of the DuckDB engine: batch functions of the main
writer (see batches.py), and reads that run on the reader's cursor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from webhookd import network
from webhookd.queue import operational as op
from webhookd.queue.pacing import Pace
from webhookd.queue.replay import Owned, plan_replay
from webhookd.queue.status import report as status_report
from webhookd.queue.webhooks import plan_patch
from webhookd.states import Status
from webhookd.store.base import (
    RATE_LIMITED,
    DeliveryFilter,
    DeliveryKey,
    DeliveryPage,
    FifoBlocked,
    NotFound,
    Page,
    StatusReport,
    WebhookLimits,
    WebhookPatch,
)
from webhookd.store.duckdb import operational
from webhookd.store.duckdb.batches import scan_once
from webhookd.store.duckdb.common import park_inactive
from webhookd.store.duckdb.fifo import fifo_ids, settle_fifo
from webhookd.store.duckdb.queries import query
from webhookd.store.records import (
    WebhookRecord,
    WebhookSecrets,
    attempt_row,
    delivery_row,
    naive_utc,
    public_key_of,
    signing_secrets,
    utcnow,
    webhook_record,
)


def _new_webhook_id() -> str:
    return "wh_" + os.urandom(12).hex()


def _fetch_webhook(con: Any, webhook_id: str, now: datetime) -> WebhookRecord | None:
    row = con.execute(query("get_webhook"), [webhook_id]).fetchone()
    return None if row is None else webhook_record(row, now)


def create_webhook(
    con: Any, payloads: Sequence[tuple[str, list[str], str, str, WebhookLimits, str | None]]
) -> list[WebhookRecord]:
    results = []
    now = utcnow()
    for url, event_types, secret, description, limits, tenant in payloads:
        webhook_id = _new_webhook_id()
        con.execute(
            query("create_webhook"),
            [
                webhook_id,
                url,
                secret,
                event_types,
                description,
                now,
                now,
                now,
                limits.rate_limit,
                limits.max_in_flight,
                str(limits.ordering),
                limits.delivery_options,
                limits.public_key,
                tenant,
            ],
        )
        created = _fetch_webhook(con, webhook_id, now)
        assert created is not None
        results.append(created)
    return results


def get_webhook(con: Any, webhook_id: str) -> WebhookRecord:
    found = _fetch_webhook(con, webhook_id, utcnow())
    if found is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return found


def get_webhook_secrets(con: Any, webhook_id: str) -> WebhookSecrets:
    row = con.execute(query("get_webhook_secrets"), [webhook_id]).fetchone()
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    url, secret, prev, prev_exp, options = row
    return url, signing_secrets(secret, prev, prev_exp, utcnow()), network.decode(options)


def list_webhooks(con: Any, limit: int, after: str | None, tenant: str | None = None) -> Page:
    now = utcnow()
    rows = con.execute(query("list_webhooks"), [after or "", tenant, tenant, limit + 1]).fetchall()
    items = [webhook_record(r, now) for r in rows[:limit]]
    return Page(items, items[-1].webhook_id if len(rows) > limit else None)


def update_webhook(
    con: Any, payloads: Sequence[tuple[str, WebhookPatch]]
) -> list[WebhookRecord | NotFound]:
    results: list[WebhookRecord | NotFound] = []
    for webhook_id, patch in payloads:
        now = utcnow()
        row = con.execute(query("webhook_pace"), [webhook_id]).fetchone()
        if row is None:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        plan = plan_patch(patch, bool(row[0]), Pace(*row[1:8]), now, row[8])
        # Column names from the plan (fixed in queue/webhooks.py), values as parameters:
        # which columns a patch sets varies (update_webhook in queries.sql).
        sets = ", ".join(f"{column} = ?" for column in plan.sets)
        con.execute(
            query("update_webhook").replace("{sets}", sets), [*plan.sets.values(), webhook_id]
        )
        if plan.rate_limited_due:
            con.execute(query("rate_limited_due"), [now, now, webhook_id, now, RATE_LIMITED])
        if plan.waiting_due:
            con.execute(query("fifo_waiting_due"), [now, now, webhook_id])
        if plan.enable:
            _set_due(con, "enable", [webhook_id], now)
            operational.write(con, op.enabled(_reported(con, webhook_id), now), now)
        elif plan.park:
            park_inactive(con, [webhook_id], now)
        # Switched to fifo: its pending rows wait behind the oldest, which keeps its time.
        settle_fifo(con, [webhook_id], now)
        updated = _fetch_webhook(con, webhook_id, now)
        assert updated is not None
        results.append(updated)
    return results


def _reported(con: Any, webhook_id: str) -> op.Webhook:
    row = con.execute(query("operational_tallies"), [[webhook_id]]).fetchone()
    return op.Webhook(row[0], row[1], list(row[2]))


def delete_webhook(con: Any, payloads: Sequence[str]) -> list[NotFound | None]:
    results: list[NotFound | None] = []
    now = utcnow()
    for webhook_id in payloads:
        rows = con.execute(query("delete_webhook"), [webhook_id]).fetchall()
        if not rows:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        # Its deliveries stay, parked, for the record: nothing is silently dropped.
        park_inactive(con, [webhook_id], now)
        results.append(None)
    return results


def rotate_secret(
    con: Any, payloads: Sequence[tuple[str, str, float]]
) -> list[WebhookRecord | NotFound]:
    results: list[WebhookRecord | NotFound] = []
    for webhook_id, secret, grace in payloads:
        now = utcnow()
        rows = con.execute(
            query("rotate_secret"),
            [secret, now + timedelta(seconds=grace), now, public_key_of(secret), webhook_id],
        ).fetchall()
        if not rows:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        updated = _fetch_webhook(con, webhook_id, now)
        assert updated is not None
        results.append(updated)
    return results


def list_deliveries(
    con: Any, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
) -> DeliveryPage:
    # From the start: the condition on the key is NULL IS NULL, true for every row.
    created, wid, eid = after if after is not None else (None, None, None)
    rows = con.execute(
        query("list_deliveries"),
        [
            filt.webhook_id,
            filt.event_id,
            None if filt.status is None else str(filt.status),
            filt.tenant,
            filt.tenant,
            created,
            created,
            wid,
            eid,
            limit + 1,
        ],
    ).fetchall()
    items = [delivery_row(r) for r in rows[:limit]]
    key: DeliveryKey | None = None
    if len(rows) > limit:
        last = rows[limit - 1]
        key = (naive_utc(last[9]), last[0], last[1])
    return DeliveryPage(items, key)


def list_attempts(con: Any, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
    rows = con.execute(query("list_attempts"), [webhook_id, event_id]).fetchall()
    items = [attempt_row(row) for row in rows]
    if not items:
        exists = con.execute(query("delivery_exists"), [webhook_id, event_id]).fetchone()
        if exists is None:
            raise NotFound(f"no delivery of {event_id!r} to {webhook_id!r}")
    return items


def _set_due(con: Any, name: str, params: list[Any], now: datetime) -> int:
    """Apply an operator event (queries enable, redrive, replay): matching rows due now,
    with a fresh budget; how many, less those of inactive webhooks parked again."""
    due, reparked = _make_due(con, name, params, now)
    return due - reparked


def _make_due(con: Any, name: str, params: list[Any], now: datetime) -> tuple[int, int]:
    """_set_due's rows made due, and of those the rows parked again."""
    rows = con.execute(query(name), [now, now, *params]).fetchall()
    reparked = park_inactive(con, [r[0] for r in rows], now)
    # A fifo webhook's rows due again take their places by seq behind one head.
    settle_fifo(con, [r[0] for r in rows], now)
    return len(rows), reparked


def redrive(
    con: Any, payloads: Sequence[tuple[Status, str | None, datetime | None, str | None]]
) -> list[int]:
    results = []
    for status, webhook_id, since, tenant in payloads:
        if since is not None and since.tzinfo:
            since = since.astimezone(UTC).replace(tzinfo=None)
        params = [str(status), webhook_id, since, since, tenant, tenant]
        results.append(_set_due(con, "redrive", params, utcnow()))
    return results


def replay(
    con: Any, payloads: Sequence[tuple[str, str | None, str | None]]
) -> list[int | NotFound]:
    """Each replay as queue/replay.py plans it (`tenant`: the caller's)."""
    results: list[int | NotFound] = []
    for event_id, webhook_id, tenant in payloads:
        now = utcnow()
        event = con.execute(query("replay_event"), [event_id]).fetchone()
        hook = None
        if webhook_id is not None:
            found = con.execute(query("webhook_exists"), [webhook_id]).fetchone()
            hook = None if found is None else Owned(found[0])
        try:
            plan = plan_replay(
                event_id, webhook_id, tenant, None if event is None else Owned(event[2]), hook
            )
        except NotFound as exc:
            results.append(exc)
            continue
        # An event the scanner has not reached yet: scan up to it first, so that the rows
        # inserted below are never the scanner's to insert again.
        scanned = scan_once(con, 10_000, careful=True, upto=event[1])
        forced = scanned.events > 0
        while scanned.cursor < event[1]:
            scanned = scan_once(con, 10_000, careful=True, upto=event[1])
        # The rows that scan enqueued are due now, as a replay would make them: they count.
        fresh = (
            con.execute(query("replay_pending"), [plan.event_id, plan.webhook_id]).fetchone()[0]
            if forced
            else 0
        )
        # Rows pruned after delivery come back from the event source.
        inserted = con.execute(
            query("replay_enqueue"),
            [now, now, now, plan.webhook_id, plan.webhook_id, plan.event_id],
        ).fetchall()
        again, reparked = _make_due(con, "replay", [plan.event_id, plan.webhook_id], now)
        reparked += park_inactive(con, [r[0] for r in inserted], now)
        settle_fifo(con, [r[0] for r in inserted], now)
        results.append(plan.count(again, fresh + len(inserted), reparked))
    return results


def status(con: Any, tenant: str | None = None) -> StatusReport:
    """With `tenant`: the queue rows, webhooks and fifo heads of that tenant's webhooks."""
    now = utcnow()
    mine = [tenant, tenant]
    cursor, latest = con.execute(query("status_scanner")).fetchone()
    return status_report(
        now=now,
        counts=con.execute(query("status_counts"), mine).fetchall(),
        oldest_due=con.execute(query("status_oldest_due"), [now, *mine]).fetchone()[0],
        cursor=cursor,
        latest=latest,
        lag=None,
        webhooks=con.execute(query("status_webhooks"), mine).fetchall(),
        fifo_blocked=_fifo_blocked(con),
        tenant=tenant,
    )


def _fifo_blocked(con: Any) -> dict[str, FifoBlocked]:
    """Fifo webhooks whose head (the lowest seq of their pending and inflight rows) has
    failed since it became the head or was last redriven, with the first such failure."""
    fifo = fifo_ids(con)
    if not fifo:
        return {}
    blocked: dict[str, FifoBlocked] = {}
    for wid, eid, attempts, base, last in con.execute(query("fifo_blocked"), [fifo]).fetchall():
        (first,) = con.execute(query("fifo_blocked_since"), [wid, eid, base]).fetchone()
        since = first or last
        if since is not None:
            blocked[wid] = FifoBlocked(eid, since, attempts)
    return blocked


def auto_disable(con: Any, payloads: Sequence[tuple[datetime, datetime | None]]) -> list[list[str]]:
    """Refresh failing_since from the log, then deactivate webhooks failing for too long.

    A webhook fails since its first attempt after its last delivered one (or after it was
    created or last enabled). Computed here, once a tick, so that recording outcomes on
    the hot path never touches the webhooks table.
    """
    results = []
    for failing_before, reported_failing_before in payloads:
        now = utcnow()
        con.execute(query("failing_since"))
        rows = con.execute(query("auto_disable"), [now, failing_before]).fetchall()
        disabled = [r[0] for r in rows]
        park_inactive(con, disabled, now)
        operational.upkeep(con, rows, reported_failing_before, now)
        results.append(disabled)
    return results
