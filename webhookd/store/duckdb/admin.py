"""Webhook and operator functions of the DuckDB engine: batch functions of the main
writer (see batches.py), and reads that run on the reader's cursor."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from webhookd.states import Event, Status, sources
from webhookd.store.base import (
    RATE_LIMITED,
    UNSET,
    DeliveryFilter,
    FifoBlocked,
    NotFound,
    Ordering,
    Page,
    StatusReport,
    Unset,
    WebhookLimits,
    WebhookPatch,
    burst,
)
from webhookd.store.duckdb.batches import scan_once
from webhookd.store.duckdb.common import MATCHES, Q, park_inactive, sql_in
from webhookd.store.duckdb.fifo import fifo_ids, settle_fifo
from webhookd.store.pacing import Pace, tokens_now
from webhookd.store.records import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    WEBHOOK_COLUMNS,
    attempt_row,
    delivery_cursor,
    delivery_row,
    parse_delivery_cursor,
    signing_secrets,
    utcnow,
    webhook_row,
)

# The rows (of the queue, or webhooks) of one tenant's webhooks; its parameter: the tenant.
_OF_TENANT = "webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = ?)"


def _new_webhook_id() -> str:
    return "wh_" + os.urandom(12).hex()


def _fetch_webhook(con: Any, webhook_id: str, now: datetime) -> dict[str, Any] | None:
    row = con.execute(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = ?", [webhook_id]
    ).fetchone()
    return None if row is None else webhook_row(row, now)


def create_webhook(
    con: Any, payloads: Sequence[tuple[str, list[str], str, str, WebhookLimits, str | None]]
) -> list[dict[str, Any]]:
    results = []
    now = utcnow()
    for url, event_types, secret, description, limits, tenant in payloads:
        webhook_id = _new_webhook_id()
        con.execute(
            """
            INSERT INTO webhooks (webhook_id, url, secret, event_types, active, description,
                                  created_at, updated_at, health_reset_at,
                                  rate_limit, max_in_flight, ordering, tenant)
            VALUES (?, ?, ?, ?, true, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
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
                tenant,
            ],
        )
        created = _fetch_webhook(con, webhook_id, now)
        assert created is not None
        results.append(created)
    return results


def get_webhook(con: Any, webhook_id: str) -> dict[str, Any]:
    found = _fetch_webhook(con, webhook_id, utcnow())
    if found is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return found


def get_webhook_secrets(con: Any, webhook_id: str) -> tuple[str, tuple[str, ...]]:
    row = con.execute(
        "SELECT url, secret, previous_secret, previous_secret_expires_at FROM webhooks "
        "WHERE webhook_id = ?",
        [webhook_id],
    ).fetchone()
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    url, secret, prev, prev_exp = row
    return url, signing_secrets(secret, prev, prev_exp, utcnow())


def list_webhooks(con: Any, limit: int, after: str | None, tenant: str | None = None) -> Page:
    now = utcnow()
    rows = con.execute(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id > ? "
        "AND (?::VARCHAR IS NULL OR tenant = ?) ORDER BY webhook_id LIMIT ?",
        [after or "", tenant, tenant, limit + 1],
    ).fetchall()
    items = [webhook_row(r, now) for r in rows[:limit]]
    return Page(items, items[-1]["webhook_id"] if len(rows) > limit else None)


def update_webhook(
    con: Any, payloads: Sequence[tuple[str, WebhookPatch]]
) -> list[dict[str, Any] | NotFound]:
    results: list[dict[str, Any] | NotFound] = []
    for webhook_id, patch in payloads:
        now = utcnow()
        row = con.execute(
            "SELECT active, webhook_id, ordering, max_in_flight, rate_limit, "
            "rate_tokens, rate_refilled_at, rate_next_at FROM webhooks WHERE webhook_id = ?",
            [webhook_id],
        ).fetchone()
        if row is None:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        was_active = bool(row[0])
        pace = Pace(*row[1:])
        sets: list[str] = ["updated_at = ?"]
        params: list[Any] = [now]
        new_rate = patch.rate_limit
        rate_changed = False
        if not isinstance(new_rate, Unset) and new_rate != pace.rate_limit:
            # The bucket keeps what it holds, within the new burst; the slots the old limit
            # gave out are void: its waiting rows are due now, and paced again.
            rate_changed = True
            held_tokens = None
            if new_rate is not None and pace.rate_limit is not None:
                held_tokens = min(burst(new_rate), tokens_now(pace, now))
            sets.append("rate_limit = ?, rate_tokens = ?, rate_refilled_at = ?")
            params.extend([new_rate, held_tokens, now])
        if rate_changed or (patch.active is not None and patch.active != was_active):
            sets.append("rate_next_at = NULL")
        if patch.max_in_flight is not UNSET:
            sets.append("max_in_flight = ?")
            params.append(patch.max_in_flight)
        ordering_changed = patch.ordering is not None and patch.ordering != pace.ordering
        if ordering_changed:
            sets.append("ordering = ?")
            params.append(str(patch.ordering))
        if patch.url is not None:
            sets.append("url = ?")
            params.append(patch.url)
        if patch.event_types is not None:
            sets.append("event_types = ?")
            params.append(patch.event_types)
        if patch.description is not None:
            sets.append("description = ?")
            params.append(patch.description)
        if patch.active is not None:
            sets.append("active = ?")
            params.append(patch.active)
            if patch.active and not was_active:
                sets.append("disabled_reason = NULL, failing_since = NULL, health_reset_at = ?")
                params.append(now)
            elif not patch.active and was_active:
                sets.append("disabled_reason = 'disabled by an operator'")
        con.execute(
            f"UPDATE webhooks SET {', '.join(sets)} WHERE webhook_id = ?", [*params, webhook_id]
        )
        if rate_changed:
            con.execute(
                f"UPDATE {Q} SET next_attempt_at = ?, updated_at = ? "
                f"WHERE webhook_id = ? AND status = '{Status.PENDING}' "
                "AND next_attempt_at > ? AND last_error = ?",
                [now, now, webhook_id, now, RATE_LIMITED],
            )
        if ordering_changed and patch.ordering == Ordering.NONE:
            # Rows that waited behind the head: due now, in any order.
            con.execute(
                f"UPDATE {Q} SET next_attempt_at = ?, updated_at = ? "
                f"WHERE webhook_id = ? AND status = '{Status.PENDING}' "
                "AND next_attempt_at IS NULL",
                [now, now, webhook_id],
            )
        if patch.active is True and not was_active:
            _set_due(con, Event.ENABLE, "webhook_id = ?", [webhook_id], now)
        elif patch.active is False:
            park_inactive(con, [webhook_id], now)
        # Switched to fifo: its pending rows wait behind the oldest, which keeps its time.
        settle_fifo(con, [webhook_id], now)
        updated = _fetch_webhook(con, webhook_id, now)
        assert updated is not None
        results.append(updated)
    return results


def delete_webhook(con: Any, payloads: Sequence[str]) -> list[NotFound | None]:
    results: list[NotFound | None] = []
    now = utcnow()
    for webhook_id in payloads:
        rows = con.execute(
            "DELETE FROM webhooks WHERE webhook_id = ? RETURNING 1", [webhook_id]
        ).fetchall()
        if not rows:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        # Its deliveries stay, parked, for the record: nothing is silently dropped.
        park_inactive(con, [webhook_id], now)
        results.append(None)
    return results


def rotate_secret(
    con: Any, payloads: Sequence[tuple[str, str, float]]
) -> list[dict[str, Any] | NotFound]:
    results: list[dict[str, Any] | NotFound] = []
    for webhook_id, secret, grace in payloads:
        now = utcnow()
        rows = con.execute(
            """
            UPDATE webhooks SET previous_secret = secret, secret = ?,
                previous_secret_expires_at = ?, updated_at = ?
            WHERE webhook_id = ? RETURNING 1
            """,
            [secret, now + timedelta(seconds=grace), now, webhook_id],
        ).fetchall()
        if not rows:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        updated = _fetch_webhook(con, webhook_id, now)
        assert updated is not None
        results.append(updated)
    return results


def list_deliveries(con: Any, filt: DeliveryFilter, limit: int, after: str | None) -> Page:
    where = ["true"]
    params: list[Any] = []
    if filt.webhook_id is not None:
        where.append("webhook_id = ?")
        params.append(filt.webhook_id)
    if filt.event_id is not None:
        where.append("event_id = ?")
        params.append(filt.event_id)
    if filt.status is not None:
        where.append("status = ?")
        params.append(str(filt.status))
    if filt.tenant is not None:
        where.append(_OF_TENANT)
        params.append(filt.tenant)
    if after:
        created, wid, eid = parse_delivery_cursor(after)
        where.append("(created_at, webhook_id, event_id) < (?::TIMESTAMP, ?, ?)")
        params.extend([created, wid, eid])
    rows = con.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM {Q} WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, webhook_id DESC, event_id DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    items = [delivery_row(r) for r in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = delivery_cursor(last[9], last[0], last[1])
    return Page(items, cursor)


def list_attempts(con: Any, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
    rows = con.execute(
        f"SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries "
        "WHERE webhook_id = ? AND event_id = ? ORDER BY attempt_id",
        [webhook_id, event_id],
    ).fetchall()
    items = [attempt_row(row) for row in rows]
    if not items:
        exists = con.execute(
            f"SELECT 1 FROM {Q} WHERE webhook_id = ? AND event_id = ?", [webhook_id, event_id]
        ).fetchone()
        if exists is None:
            raise NotFound(f"no delivery of {event_id!r} to {webhook_id!r}")
    return items


def _set_due(con: Any, event: Event, where: str, params: list[Any], now: datetime) -> int:
    """Apply an operator event (enable, redrive, replay): matching rows due now, fresh budget."""
    rows = con.execute(
        f"""
        UPDATE {Q} SET status = '{Status.PENDING}', next_attempt_at = ?, lease_until = NULL,
            retry_base = attempts, updated_at = ?
        WHERE status IN {sql_in(sources(event))} AND {where}
        RETURNING webhook_id
        """,
        [now, now, *params],
    ).fetchall()
    reparked = park_inactive(con, [r[0] for r in rows], now)
    # A fifo webhook's rows due again take their places by seq behind one head.
    settle_fifo(con, [r[0] for r in rows], now)
    return len(rows) - reparked


def redrive(
    con: Any, payloads: Sequence[tuple[Status, str | None, datetime | None, str | None]]
) -> list[int]:
    results = []
    for status, webhook_id, since, tenant in payloads:
        where = ["status = ?"]
        params: list[Any] = [str(status)]
        if webhook_id is not None:
            where.append("webhook_id = ?")
            params.append(webhook_id)
        if tenant is not None:
            where.append(_OF_TENANT)
            params.append(tenant)
        if since is not None:
            where.append("last_attempt_at >= ?")
            params.append(since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since)
        results.append(_set_due(con, Event.REDRIVE, " AND ".join(where), params, utcnow()))
    return results


def replay(
    con: Any, payloads: Sequence[tuple[str, str | None, str | None]]
) -> list[int | NotFound]:
    """`tenant`: the caller's (a tenant token): an event of another tenant is not found.
    A webhook named explicitly must be of the event's tenant (routing holds for replay)."""
    results: list[int | NotFound] = []
    for event_id, webhook_id, tenant in payloads:
        now = utcnow()
        event = con.execute(
            "SELECT event_type, seq, tenant FROM pipeline_events WHERE event_id = ?", [event_id]
        ).fetchone()
        if event is None or (tenant is not None and event[2] != tenant):
            results.append(NotFound(f"no event {event_id!r}"))
            continue
        # An event the scanner has not reached yet: scan up to it first, so that the rows
        # inserted below are never the scanner's to insert again.
        scanned = scan_once(con, 10_000, careful=True, upto=event[1])
        forced = scanned.events > 0
        while scanned.cursor < event[1]:
            scanned = scan_once(con, 10_000, careful=True, upto=event[1])
        if webhook_id is not None:
            hook = con.execute(
                "SELECT tenant FROM webhooks WHERE webhook_id = ?", [webhook_id]
            ).fetchone()
            if hook is None or hook[0] != event[2]:
                results.append(NotFound(f"no webhook {webhook_id!r}"))
                continue
            match, params = "w.webhook_id = ?", [webhook_id]
        else:
            match = MATCHES
            params = []
        where, where_params = "event_id = ?", [event_id]
        if webhook_id is not None:
            where += " AND webhook_id = ?"
            where_params.append(webhook_id)
        # The rows that scan enqueued are due now, as a replay would make them: they count.
        fresh = (
            con.execute(
                f"SELECT count(*) FROM {Q} WHERE {where} AND status = '{Status.PENDING}'",
                where_params,
            ).fetchone()[0]
            if forced
            else 0
        )
        # Rows pruned after delivery come back from the event source.
        inserted = con.execute(
            f"""
            INSERT INTO {Q} (webhook_id, event_id, status, attempts, retry_base,
                             next_attempt_at, body, created_at, updated_at, seq)
            SELECT w.webhook_id, e.event_id, '{Status.PENDING}', 0, 0, ?, e.body, ?, ?, e.seq
            FROM pipeline_events e JOIN webhooks w ON {match}
            WHERE e.event_id = ?
            ON CONFLICT DO NOTHING
            RETURNING webhook_id
            """,
            [now, now, now, *params, event_id],
        ).fetchall()
        again = _set_due(con, Event.REPLAY, where, where_params, now)
        reparked = park_inactive(con, [r[0] for r in inserted], now)
        settle_fifo(con, [r[0] for r in inserted], now)
        results.append(fresh + again + len(inserted) - reparked)
    return results


def status(con: Any, tenant: str | None = None) -> StatusReport:
    """With `tenant`: the queue rows, webhooks and fifo heads of that tenant's webhooks."""
    now = utcnow()
    report = StatusReport()
    mine, params = ("true", []) if tenant is None else (_OF_TENANT, [tenant])
    for wid, status, n in con.execute(
        f"SELECT webhook_id, status, count(*) FROM {Q} WHERE {mine} GROUP BY ALL", params
    ).fetchall():
        report.by_status[status] = report.by_status.get(status, 0) + n
        report.by_webhook.setdefault(wid, {})[status] = n
    oldest = con.execute(
        f"SELECT min(next_attempt_at) FROM {Q} WHERE status = '{Status.PENDING}' "
        f"AND next_attempt_at <= ? AND {mine}",
        [now, *params],
    ).fetchone()[0]
    if oldest is not None:
        report.oldest_due_age_seconds = max(0.0, (now - oldest).total_seconds())
    cursor, latest = con.execute(
        "SELECT (SELECT seq FROM scanner_cursor WHERE name = 'main'), "
        "(SELECT coalesce(max(seq), 0) FROM pipeline_events)"
    ).fetchone()
    report.scanner_cursor = cursor
    report.latest_seq = max(latest, cursor)
    report.scanner_lag_events = max(0, latest - cursor)
    for wid, active, reason in con.execute(
        f"SELECT webhook_id, active, disabled_reason FROM webhooks WHERE {mine} "
        "ORDER BY webhook_id",
        params,
    ).fetchall():
        if active:
            report.webhooks_active += 1
        else:
            report.disabled_webhooks[wid] = reason
    blocked = _fifo_blocked(con)
    if tenant is not None:
        ids = set(report.by_webhook) | set(report.disabled_webhooks)
        blocked = {wid: b for wid, b in blocked.items() if wid in ids}
    report.fifo_blocked = blocked
    return report


def _fifo_blocked(con: Any) -> dict[str, FifoBlocked]:
    """Fifo webhooks whose head (the lowest seq of their pending and inflight rows) has
    failed since it became the head or was last redriven, with the first such failure."""
    fifo = fifo_ids(con)
    if not fifo:
        return {}
    blocked: dict[str, FifoBlocked] = {}
    for wid, eid, attempts, base, last in con.execute(
        f"""
        SELECT q.webhook_id, q.event_id, q.attempts, q.retry_base, q.last_attempt_at
        FROM {Q} q
        JOIN (SELECT webhook_id, min(seq) AS head FROM {Q}
              WHERE status IN ('{Status.PENDING}', '{Status.INFLIGHT}')
                AND list_contains(?::VARCHAR[], webhook_id)
              GROUP BY webhook_id) h ON q.webhook_id = h.webhook_id AND q.seq = h.head
        WHERE q.status IN ('{Status.PENDING}', '{Status.INFLIGHT}') AND q.attempts > q.retry_base
        ORDER BY q.webhook_id
        """,
        [fifo],
    ).fetchall():
        (first,) = con.execute(
            "SELECT min(attempted_at) FROM webhook_deliveries "
            "WHERE webhook_id = ? AND event_id = ? AND attempt > ?",
            [wid, eid, base],
        ).fetchone()
        since = first or last
        if since is not None:
            blocked[wid] = FifoBlocked(eid, since, attempts)
    return blocked


def auto_disable(con: Any, payloads: Sequence[datetime]) -> list[list[str]]:
    """Refresh failing_since from the log, then deactivate webhooks failing for too long.

    A webhook fails since its first attempt after its last delivered one (or after it was
    created or last enabled). Computed here, once a tick, so that recording outcomes on
    the hot path never touches the webhooks table.
    """
    results = []
    for failing_before in payloads:
        now = utcnow()
        con.execute(
            """
            UPDATE webhooks AS w SET failing_since = f.since
            FROM (
                SELECT w.webhook_id,
                       (SELECT min(l.attempted_at) FROM webhook_deliveries l
                        WHERE l.webhook_id = w.webhook_id
                          AND l.attempted_at >= coalesce(w.health_reset_at, w.created_at)
                          AND l.attempted_at > coalesce(
                              (SELECT max(ok.attempted_at) FROM webhook_deliveries ok
                               WHERE ok.webhook_id = w.webhook_id
                                 AND ok.outcome = 'delivered'),
                              '-infinity'::TIMESTAMP)) AS since
                FROM webhooks w WHERE w.active
            ) f
            WHERE w.webhook_id = f.webhook_id
              AND w.failing_since IS DISTINCT FROM f.since
            """
        )
        rows = con.execute(
            """
            UPDATE webhooks SET active = false, updated_at = ?,
                disabled_reason = 'every attempt failed since '
                    || strftime(failing_since, '%Y-%m-%dT%H:%M:%SZ')
            WHERE active AND failing_since IS NOT NULL AND failing_since < ?
            RETURNING webhook_id
            """,
            [now, failing_before],
        ).fetchall()
        disabled = [r[0] for r in rows]
        park_inactive(con, disabled, now)
        results.append(disabled)
    return results
