"""PostgreSQL: webhooks and the operators' operations, as the DuckDB engine does them.

Module-level functions on one asyncpg connection whose search_path is the webhookd
schema; each writes in its own transaction when it writes more than one statement. The
reference behaviour is store/duckdb/admin.py (`create_webhook` ... `auto_disable`); rows and
cursors are formatted by store/records.py, so both engines answer alike.

Differences that come from several daemons sharing the queue:
- replay does not force a scan first: the scanner inserts with ON CONFLICT DO NOTHING,
  so rows replay inserts for an event it has not reached yet are never inserted twice.
  An event a producer wrote in SQL has no body until someone builds it: replay builds it
  as the scanner does and stores it.
- prune deletes by ctid but checks the row's state again in the DELETE itself: a
  delivered row replayed by another transaction meanwhile is not deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from webhookd import logs, network
from webhookd.events import body as event_body
from webhookd.events import canonical_json
from webhookd.queue.pacing import Pace
from webhookd.queue.replay import Owned, plan_replay
from webhookd.queue.status import report as status_report
from webhookd.queue.webhooks import plan_patch
from webhookd.states import Event, Status, sources
from webhookd.store.base import (
    RATE_LIMITED,
    DeliveryFilter,
    DeliveryKey,
    DeliveryPage,
    NotFound,
    Page,
    Pruned,
    StatusReport,
    WebhookLimits,
    WebhookPatch,
)
from webhookd.store.postgres import fifo, operational
from webhookd.store.postgres.common import MATCHES, Q, db_now, in_states, notify, park_inactive
from webhookd.store.records import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    WEBHOOK_COLUMNS,
    WebhookSecrets,
    attempt_row,
    delivery_row,
    naive_utc,
    public_key_of,
    signing_secrets,
    webhook_row,
)

log = logs.get("webhookd.store")

# asyncpg has no type stubs: a connection is Any here.
Connection = Any


class _Params:
    """Positional parameters ($1, $2, ...) added as the SQL is composed."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def new_webhook_id() -> str:
    return "wh_" + os.urandom(12).hex()


def _not_found(webhook_id: str) -> NotFound:
    return NotFound(f"no webhook {webhook_id!r}")


async def _fetch_webhook(con: Connection, webhook_id: str, now: datetime) -> dict[str, Any]:
    row = await con.fetchrow(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = $1", webhook_id
    )
    if row is None:
        raise _not_found(webhook_id)
    return webhook_row(row, now)


# -- webhooks ----------------------------------------------------------------------------


async def create_webhook(
    con: Connection,
    url: str,
    event_types: list[str],
    secret: str,
    description: str,
    limits: WebhookLimits | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    limits = limits or WebhookLimits()
    now = await db_now(con)
    row = await con.fetchrow(
        f"""
        INSERT INTO webhooks (webhook_id, url, secret, event_types, active, description,
                              created_at, updated_at, health_reset_at,
                              rate_limit, max_in_flight, ordering,
                              delivery_options, public_key, tenant)
        VALUES ($1, $2, $3, $4::text[], true, $5, $6, $6, $6, $7, $8, $9, $10, $11, $12)
        RETURNING {WEBHOOK_COLUMNS}
        """,
        new_webhook_id(),
        url,
        secret,
        list(event_types),
        description,
        now,
        limits.rate_limit,
        limits.max_in_flight,
        str(limits.ordering),
        limits.delivery_options,
        limits.public_key,
        tenant,
    )
    return webhook_row(row, now)


async def get_webhook(con: Connection, webhook_id: str) -> dict[str, Any]:
    return await _fetch_webhook(con, webhook_id, await db_now(con))


async def get_webhook_secrets(con: Connection, webhook_id: str) -> WebhookSecrets:
    row = await con.fetchrow(
        "SELECT url, secret, previous_secret, previous_secret_expires_at, delivery_options "
        "FROM webhooks WHERE webhook_id = $1",
        webhook_id,
    )
    if row is None:
        raise _not_found(webhook_id)
    url, secret, previous, previous_expires_at, options = row
    secrets = signing_secrets(secret, previous, previous_expires_at, await db_now(con))
    return url, secrets, network.decode(options)


async def list_webhooks(
    con: Connection, limit: int, after: str | None, tenant: str | None = None
) -> Page:
    now = await db_now(con)
    rows = await con.fetch(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id > $1 "
        "AND ($3::text IS NULL OR tenant = $3) ORDER BY webhook_id LIMIT $2",
        after or "",
        limit + 1,
        tenant,
    )
    items = [webhook_row(r, now) for r in rows[:limit]]
    return Page(items, items[-1]["webhook_id"] if len(rows) > limit else None)


async def update_webhook(con: Connection, webhook_id: str, patch: WebhookPatch) -> dict[str, Any]:
    async with con.transaction():
        now = await db_now(con)
        # Locked: two operators enabling and disabling at once apply one after the other.
        current = await con.fetchrow(
            "SELECT active, webhook_id, ordering, max_in_flight, rate_limit, rate_tokens, "
            "rate_refilled_at, rate_next_at, delivery_options FROM webhooks "
            "WHERE webhook_id = $1 FOR UPDATE",
            webhook_id,
        )
        if current is None:
            raise _not_found(webhook_id)
        plan = plan_patch(
            patch,
            current["active"],
            Pace(*list(current.values())[1:8]),
            now,
            current["delivery_options"],
        )
        p = _Params()
        # Column names from the plan (fixed in queue/webhooks.py), values as parameters.
        sets = ", ".join(f"{column} = {p(value)}" for column, value in plan.sets.items())
        await con.execute(
            f"UPDATE webhooks SET {sets} WHERE webhook_id = {p(webhook_id)}", *p.values
        )
        due = 0
        if plan.rate_limited_due:
            due += _rowcount(
                await con.execute(
                    f"UPDATE {Q} SET next_attempt_at = $2, updated_at = $2 "
                    f"WHERE webhook_id = $1 AND status = '{Status.PENDING}' "
                    "AND next_attempt_at > $2 AND last_error = $3",
                    webhook_id,
                    now,
                    RATE_LIMITED,
                )
            )
        if plan.waiting_due:
            # Rows that waited behind the head: due now, in any order.
            due += _rowcount(
                await con.execute(
                    f"UPDATE {Q} SET next_attempt_at = $2, updated_at = $2 "
                    f"WHERE webhook_id = $1 AND status = '{Status.PENDING}' "
                    "AND next_attempt_at IS NULL",
                    webhook_id,
                    now,
                )
            )
        if plan.enable:
            due += await _set_due(con, Event.ENABLE, "webhook_id = $1", [webhook_id], now)
            await operational.enabled(con, webhook_id, now)
        elif plan.park:
            await park_inactive(con, [webhook_id], now)
        # Switched to fifo: its pending rows wait behind the oldest, which keeps its time.
        due += await fifo.settle(con, [webhook_id])
        if due:
            await notify(con, "deliveries")
        return await _fetch_webhook(con, webhook_id, now)


async def delete_webhook(con: Connection, webhook_id: str) -> None:
    async with con.transaction():
        deleted = await con.fetchval(
            "DELETE FROM webhooks WHERE webhook_id = $1 RETURNING 1", webhook_id
        )
        if deleted is None:
            raise _not_found(webhook_id)
        # Its deliveries stay, parked, for the record: nothing is silently dropped.
        await park_inactive(con, [webhook_id], await db_now(con))


async def rotate_secret(
    con: Connection, webhook_id: str, secret: str, grace: float
) -> dict[str, Any]:
    now = await db_now(con)
    row = await con.fetchrow(
        f"""
        UPDATE webhooks SET previous_secret = secret, secret = $1,
            previous_secret_expires_at = $2, updated_at = $3, public_key = $5
        WHERE webhook_id = $4
        RETURNING {WEBHOOK_COLUMNS}
        """,
        secret,
        now + timedelta(seconds=grace),
        now,
        webhook_id,
        public_key_of(secret),
    )
    if row is None:
        raise _not_found(webhook_id)
    return webhook_row(row, now)


# -- operators ---------------------------------------------------------------------------


async def list_deliveries(
    con: Connection, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
) -> DeliveryPage:
    p = _Params()
    where = ["true"]
    if filt.webhook_id is not None:
        where.append(f"webhook_id = {p(filt.webhook_id)}")
    if filt.event_id is not None:
        where.append(f"event_id = {p(filt.event_id)}")
    if filt.status is not None:
        where.append(f"status = {p(str(filt.status))}")
    if filt.tenant is not None:
        where.append(
            f"webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = {p(filt.tenant)})"
        )
    if after is not None:
        created, wid, eid = after
        where.append(
            f"(created_at, webhook_id, event_id) < ({p(created)}::timestamp, {p(wid)}, {p(eid)})"
        )
    rows = await con.fetch(
        f"SELECT {DELIVERY_COLUMNS} FROM {Q} WHERE {' AND '.join(where)} "
        f"ORDER BY created_at DESC, webhook_id DESC, event_id DESC LIMIT {p(limit + 1)}",
        *p.values,
    )
    items = [delivery_row(r) for r in rows[:limit]]
    key: DeliveryKey | None = None
    if len(rows) > limit:
        last = rows[limit - 1]
        key = (naive_utc(last["created_at"]), last["webhook_id"], last["event_id"])
    return DeliveryPage(items, key)


async def list_attempts(con: Connection, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
    rows = await con.fetch(
        f"SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries "
        "WHERE webhook_id = $1 AND event_id = $2 ORDER BY attempt_id",
        webhook_id,
        event_id,
    )
    items = [attempt_row(r) for r in rows]
    if not items:
        queued = await con.fetchval(
            f"SELECT 1 FROM {Q} WHERE webhook_id = $1 AND event_id = $2", webhook_id, event_id
        )
        if queued is None:
            raise NotFound(f"no delivery of {event_id!r} to {webhook_id!r}")
    return items


async def _set_due(
    con: Connection, event: Event, where: str, params: Sequence[Any], now: datetime
) -> int:
    """Apply an operator event (enable, redrive, replay) to the rows in `where` (whose
    placeholders are $1..$len(params)): due now, a fresh attempt budget. Rows of inactive
    or removed webhooks go back to parked and do not count. In the caller's transaction."""
    due, reparked = await _make_due(con, sources(event), where, params, now)
    return due - reparked


async def _make_due(
    con: Connection, states: Sequence[Status], where: str, params: Sequence[Any], now: datetime
) -> tuple[int, int]:
    """_set_due for the rows in `states`: the rows made due, and of those the rows parked
    again."""
    at = f"${len(params) + 1}"
    rows = await con.fetch(
        f"""
        WITH due AS (
            UPDATE {Q} SET status = '{Status.PENDING}', next_attempt_at = {at},
                lease_until = NULL, claimed_by = NULL, retry_base = attempts, updated_at = {at}
            WHERE status IN {in_states(states)} AND {where}
            RETURNING webhook_id)
        SELECT webhook_id, count(*) FROM due GROUP BY webhook_id
        """,
        *params,
        now,
    )
    reparked = await park_inactive(con, [r[0] for r in rows], now)
    # A fifo webhook's rows due again take their places by seq behind one head.
    await fifo.settle(con, [r[0] for r in rows])
    return int(sum(r[1] for r in rows)), reparked


async def redrive(
    con: Connection,
    status: Status,
    webhook_id: str | None,
    since: datetime | None,
    tenant: str | None = None,
) -> int:
    p = _Params()
    where = [f"status = {p(str(status))}"]
    if webhook_id is not None:
        where.append(f"webhook_id = {p(webhook_id)}")
    if tenant is not None:
        where.append(f"webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = {p(tenant)})")
    if since is not None:
        where.append(f"last_attempt_at >= {p(naive_utc(since))}::timestamp")
    async with con.transaction():
        count = await _set_due(con, Event.REDRIVE, " AND ".join(where), p.values, await db_now(con))
        if count:
            await notify(con, "deliveries")
    return count


def build_body(event_id: str, event_type: str, occurred_at: datetime, payload_text: str) -> bytes:
    """The canonical body of an event a producer wrote in SQL (pipeline_events.body NULL):
    what the daemon would have built had the event come through the API. `occurred_at`
    is naive UTC, as the table keeps it; `payload_text` the jsonb column as text."""
    return event_body(
        event_id,
        event_type,
        occurred_at.replace(tzinfo=UTC),
        canonical_json(json.loads(payload_text)),
    )


def build_body_or_stored(
    event_id: str, event_type: str, occurred_at: datetime, payload_text: str
) -> bytes:
    """build_body, or for data canonical JSON cannot carry (a number beyond a double's
    range, nesting too deep for Python) the data as PostgreSQL prints it: still JSON, and
    the same bytes the scanner sends for such an event (scans.py, build_body)."""
    try:
        return build_body(event_id, event_type, occurred_at, payload_text)
    except (ValueError, RecursionError) as exc:
        log.warning(
            "an event's data has no canonical JSON form; sending it as stored",
            event_id=event_id,
            error=str(exc),
        )
        return event_body(event_id, event_type, occurred_at.replace(tzinfo=UTC), payload_text)


async def replay(
    con: Connection, event_id: str, webhook_id: str | None, tenant: str | None = None
) -> int:
    """As queue/replay.py plans it (`tenant`: the caller's)."""
    async with con.transaction():
        now = await db_now(con)
        event = await con.fetchrow(
            "SELECT event_type, occurred_at, payload::text, body, tenant FROM pipeline_events "
            "WHERE event_id = $1",
            event_id,
        )
        hook = None
        if webhook_id is not None:
            found = await con.fetchrow(
                "SELECT tenant FROM webhooks WHERE webhook_id = $1", webhook_id
            )
            hook = None if found is None else Owned(found["tenant"])
        plan = plan_replay(
            event_id, webhook_id, tenant, None if event is None else Owned(event["tenant"]), hook
        )
        event_type, occurred_at, payload_text, body, _ = event
        if body is None:
            # Written by a producer in SQL and not scanned yet: build the body as the
            # scanner would (the same bytes, whoever stores them first).
            body = build_body_or_stored(event_id, event_type, occurred_at, payload_text)
            await con.execute(
                "UPDATE pipeline_events SET body = $2 WHERE event_id = $1 AND body IS NULL",
                event_id,
                body,
            )
        # Rows still there: due again. First, so that a row prune deletes meanwhile is
        # skipped here and inserted again below (the INSERT, a later statement, no longer
        # sees it); inserting first would find it, insert nothing, then miss it here.
        where, where_params = "event_id = $1", [plan.event_id]
        if plan.webhook_id is not None:
            where += " AND webhook_id = $2"
            where_params.append(plan.webhook_id)
        again, reparked = await _make_due(con, plan.states, where, where_params, now)
        # Rows pruned after delivery, or not enqueued yet (the scanner has not reached the
        # event: it will find them here and insert nothing), come from the event source.
        # A webhook named explicitly gets the event whatever its filter, as on DuckDB.
        p = _Params()
        match = MATCHES if plan.webhook_id is None else f"w.webhook_id = {p(plan.webhook_id)}"
        at = p(now)
        inserted = await con.fetch(
            f"""
            INSERT INTO {Q} (webhook_id, event_id, status, attempts, retry_base,
                             next_attempt_at, body, created_at, updated_at, seq,
                             traceparent)
            SELECT w.webhook_id, e.event_id, '{plan.becomes}', 0, 0, {at}::timestamp,
                   {p(body)}::bytea, {at}::timestamp, {at}::timestamp, e.seq, e.traceparent
            FROM pipeline_events e JOIN webhooks w ON {match}
            WHERE e.event_id = {p(plan.event_id)}
            ON CONFLICT DO NOTHING
            RETURNING webhook_id
            """,
            *p.values,
        )
        reparked += await park_inactive(con, [r[0] for r in inserted], now)
        await fifo.settle(con, [r[0] for r in inserted])
        count = plan.count(again, len(inserted), reparked)
        if count:
            await notify(con, "deliveries")
    return count


async def status(con: Connection, tenant: str | None = None) -> StatusReport:
    """With `tenant`: the queue rows, webhooks and fifo heads of that tenant's webhooks."""
    now = await db_now(con)
    mine = "true"
    params: list[Any] = []
    if tenant is not None:
        mine = "webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = $1)"
        params = [tenant]
    counts = await con.fetch(
        f"SELECT webhook_id, status, count(*) FROM {Q} WHERE {mine} GROUP BY webhook_id, status",
        *params,
    )
    oldest = await con.fetchval(
        f"SELECT min(next_attempt_at) FROM {Q} "
        f"WHERE status = '{Status.PENDING}' AND next_attempt_at <= ${len(params) + 1} "
        f"AND {mine}",
        *params,
        now,
    )
    # The scanner's lag: the events of transactions it has not scanned yet (those running
    # at its snapshot, and those that began later), less the part of a batch in progress
    # it has scanned (scan_read in queries.sql). latest_seq is the highest seq to scan.
    cursor, lag, latest = await con.fetchrow(
        """
        SELECT c.seq, l.n, l.high FROM scanner_cursor c
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, max(e.seq) AS high FROM pipeline_events e
            WHERE (e.xid = ANY (ARRAY(SELECT pg_snapshot_xip(c.snap)))
                   OR e.xid >= pg_snapshot_xmax(c.snap))
              AND NOT (c.target IS NOT NULL AND pg_visible_in_snapshot(e.xid, c.target)
                       AND (e.xid, e.seq) <= (c.xid, c.seq))) l
        WHERE c.name = 'main'
        """
    )
    webhooks = await con.fetch(
        f"SELECT webhook_id, active, disabled_reason FROM webhooks WHERE {mine} "
        "ORDER BY webhook_id",
        *params,
    )
    return status_report(
        now=now,
        counts=[tuple(r) for r in counts],
        oldest_due=oldest,
        cursor=cursor,
        latest=latest,
        lag=lag,
        webhooks=[tuple(r) for r in webhooks],
        fifo_blocked=await fifo.blocked(con),
        tenant=tenant,
        events_rejected=await con.fetchval("SELECT count(*) FROM rejected_events"),
    )


async def prune(
    con: Connection, delivered_before: datetime, log_before: datetime, batch: int
) -> Pruned:
    """One batch of each: delivered queue rows last changed before `delivered_before`,
    log rows attempted before `log_before`. The DELETE checks the row's state again: a
    row another transaction replayed meanwhile (no longer delivered) stays."""
    async with con.transaction():
        queue_rows = await con.execute(
            f"""
            DELETE FROM {Q}
            WHERE ctid = ANY (ARRAY(
                    SELECT ctid FROM {Q}
                    WHERE status = '{Status.DELIVERED}' AND updated_at < $1
                    ORDER BY updated_at LIMIT $2))
              AND status = '{Status.DELIVERED}' AND updated_at < $1
            """,
            delivered_before,
            batch,
        )
        log_rows = await con.execute(
            """
            DELETE FROM webhook_deliveries
            WHERE ctid = ANY (ARRAY(
                    SELECT ctid FROM webhook_deliveries WHERE attempted_at < $1
                    ORDER BY attempted_at LIMIT $2))
              AND attempted_at < $1
            """,
            log_before,
            batch,
        )
    return Pruned(_rowcount(queue_rows), _rowcount(log_rows))


def _rowcount(command_tag: str) -> int:
    return int(command_tag.split()[-1])


async def auto_disable(
    con: Connection, failing_before: datetime, reported_failing_before: datetime | None = None
) -> list[str]:
    """Refresh failing_since from the log, then deactivate webhooks failing for too long.

    A webhook fails since its first attempt after its last delivered one (or after it was
    created or last enabled), as on DuckDB."""
    async with con.transaction():
        now = await db_now(con)
        await con.execute(
            f"""
            UPDATE webhooks AS w SET failing_since = f.since
            FROM (
                SELECT h.webhook_id,
                       (SELECT min(l.attempted_at) FROM webhook_deliveries l
                        WHERE l.webhook_id = h.webhook_id
                          AND l.attempted_at >= coalesce(h.health_reset_at, h.created_at)
                          AND l.attempted_at > coalesce(
                              (SELECT max(ok.attempted_at) FROM webhook_deliveries ok
                               WHERE ok.webhook_id = h.webhook_id
                                 AND ok.outcome = '{Status.DELIVERED}'),
                              '-infinity'::timestamp)) AS since
                FROM webhooks h WHERE h.active
            ) f
            WHERE w.webhook_id = f.webhook_id
              AND w.failing_since IS DISTINCT FROM f.since
            """
        )
        rows = await con.fetch(
            """
            UPDATE webhooks SET active = false, updated_at = $1,
                disabled_reason = 'every attempt failed since '
                    || to_char(failing_since, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            WHERE active AND failing_since IS NOT NULL AND failing_since < $2
            RETURNING webhook_id, tenant, event_types, disabled_reason
            """,
            now,
            naive_utc(failing_before),
        )
        disabled = [r[0] for r in rows]
        await park_inactive(con, disabled, now)
        await operational.upkeep(con, rows, reported_failing_before, now)
    return disabled
