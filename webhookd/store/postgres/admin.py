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
from webhookd.states import Status
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
from webhookd.store.postgres.common import db_now, notify, park_inactive
from webhookd.store.postgres.queries import query
from webhookd.store.records import (
    WebhookRecord,
    WebhookSecrets,
    attempt_row,
    delivery_row,
    naive_utc,
    public_key_of,
    signing_secrets,
    webhook_record,
)

log = logs.get("webhookd.store")

# asyncpg has no type stubs: a connection is Any here.
Connection = Any


def new_webhook_id() -> str:
    return "wh_" + os.urandom(12).hex()


def _not_found(webhook_id: str) -> NotFound:
    return NotFound(f"no webhook {webhook_id!r}")


async def _fetch_webhook(con: Connection, webhook_id: str, now: datetime) -> WebhookRecord:
    row = await con.fetchrow(query("get_webhook"), webhook_id)
    if row is None:
        raise _not_found(webhook_id)
    return webhook_record(row, now)


# -- webhooks ----------------------------------------------------------------------------


async def create_webhook(
    con: Connection,
    url: str,
    event_types: list[str],
    secret: str,
    description: str,
    limits: WebhookLimits | None = None,
    tenant: str | None = None,
) -> WebhookRecord:
    limits = limits or WebhookLimits()
    now = await db_now(con)
    row = await con.fetchrow(
        query("create_webhook"),
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
    return webhook_record(row, now)


async def get_webhook(con: Connection, webhook_id: str) -> WebhookRecord:
    return await _fetch_webhook(con, webhook_id, await db_now(con))


async def get_webhook_secrets(con: Connection, webhook_id: str) -> WebhookSecrets:
    row = await con.fetchrow(query("get_webhook_secrets"), webhook_id)
    if row is None:
        raise _not_found(webhook_id)
    url, secret, previous, previous_expires_at, options = row
    secrets = signing_secrets(secret, previous, previous_expires_at, await db_now(con))
    return url, secrets, network.decode(options)


async def list_webhooks(
    con: Connection, limit: int, after: str | None, tenant: str | None = None
) -> Page:
    now = await db_now(con)
    rows = await con.fetch(query("list_webhooks"), after or "", limit + 1, tenant)
    items = [webhook_record(r, now) for r in rows[:limit]]
    return Page(items, items[-1].webhook_id if len(rows) > limit else None)


async def update_webhook(con: Connection, webhook_id: str, patch: WebhookPatch) -> WebhookRecord:
    async with con.transaction():
        now = await db_now(con)
        # Locked: two operators enabling and disabling at once apply one after the other.
        current = await con.fetchrow(query("webhook_pace"), webhook_id)
        if current is None:
            raise _not_found(webhook_id)
        plan = plan_patch(
            patch,
            current["active"],
            Pace(*list(current.values())[1:8]),
            now,
            current["delivery_options"],
        )
        # Column names from the plan (fixed in queue/webhooks.py), values as parameters
        # from $2 on: which columns a patch sets varies (update_webhook in queries.sql).
        sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(plan.sets, start=2))
        await con.execute(
            query("update_webhook").replace("{sets}", sets), webhook_id, *plan.sets.values()
        )
        due = 0
        if plan.rate_limited_due:
            due += _rowcount(
                await con.execute(query("rate_limited_due"), webhook_id, now, RATE_LIMITED)
            )
        if plan.waiting_due:
            due += _rowcount(await con.execute(query("fifo_waiting_due"), webhook_id, now))
        if plan.enable:
            due += await _set_due(con, "enable", [webhook_id], now)
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
        deleted = await con.fetchval(query("delete_webhook"), webhook_id)
        if deleted is None:
            raise _not_found(webhook_id)
        # Its deliveries stay, parked, for the record: nothing is silently dropped.
        await park_inactive(con, [webhook_id], await db_now(con))


async def rotate_secret(
    con: Connection, webhook_id: str, secret: str, grace: float
) -> WebhookRecord:
    now = await db_now(con)
    row = await con.fetchrow(
        query("rotate_secret"),
        secret,
        now + timedelta(seconds=grace),
        now,
        webhook_id,
        public_key_of(secret),
    )
    if row is None:
        raise _not_found(webhook_id)
    return webhook_record(row, now)


# -- operators ---------------------------------------------------------------------------


async def list_deliveries(
    con: Connection, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
) -> DeliveryPage:
    # From the start: the condition on the key is NULL IS NULL, true for every row.
    created, wid, eid = after if after is not None else (None, None, None)
    rows = await con.fetch(
        query("list_deliveries"),
        filt.webhook_id,
        filt.event_id,
        None if filt.status is None else str(filt.status),
        filt.tenant,
        created,
        wid,
        eid,
        limit + 1,
    )
    items = [delivery_row(r) for r in rows[:limit]]
    key: DeliveryKey | None = None
    if len(rows) > limit:
        last = rows[limit - 1]
        key = (naive_utc(last["created_at"]), last["webhook_id"], last["event_id"])
    return DeliveryPage(items, key)


async def list_attempts(con: Connection, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
    rows = await con.fetch(query("list_attempts"), webhook_id, event_id)
    items = [attempt_row(r) for r in rows]
    if not items:
        queued = await con.fetchval(query("delivery_exists"), webhook_id, event_id)
        if queued is None:
            raise NotFound(f"no delivery of {event_id!r} to {webhook_id!r}")
    return items


async def _set_due(con: Connection, name: str, params: Sequence[Any], now: datetime) -> int:
    """Apply an operator event (queries enable, redrive, replay; `params` from $2 on): the
    rows it takes due now, a fresh attempt budget. Rows of inactive or removed webhooks go
    back to parked and do not count. In the caller's transaction."""
    due, reparked = await _make_due(con, name, params, now)
    return due - reparked


async def _make_due(
    con: Connection, name: str, params: Sequence[Any], now: datetime
) -> tuple[int, int]:
    """_set_due's rows made due, and of those the rows parked again."""
    rows = await con.fetch(query(name), now, *params)
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
    params = [str(status), webhook_id, tenant, None if since is None else naive_utc(since)]
    async with con.transaction():
        count = await _set_due(con, "redrive", params, await db_now(con))
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
        event = await con.fetchrow(query("replay_event"), event_id)
        hook = None
        if webhook_id is not None:
            found = await con.fetchrow(query("webhook_exists"), webhook_id)
            hook = None if found is None else Owned(found["tenant"])
        plan = plan_replay(
            event_id, webhook_id, tenant, None if event is None else Owned(event["tenant"]), hook
        )
        event_type, occurred_at, payload_text, body, _ = event
        if body is None:
            # Written by a producer in SQL and not scanned yet: build the body as the
            # scanner would (the same bytes, whoever stores them first).
            body = build_body_or_stored(event_id, event_type, occurred_at, payload_text)
            await con.execute(query("replay_body"), event_id, body)
        # Rows still there: due again. First, so that a row prune deletes meanwhile is
        # skipped here and inserted again below (the INSERT, a later statement, no longer
        # sees it); inserting first would find it, insert nothing, then miss it here.
        # The rows it takes (plan.states) and what they become (plan.becomes) are
        # queue/replay.py's, written in queries.sql as {SOURCES_REPLAY} and {PENDING}.
        again, reparked = await _make_due(con, "replay", [plan.event_id, plan.webhook_id], now)
        # Rows pruned after delivery, or not enqueued yet (the scanner has not reached the
        # event: it will find them here and insert nothing), come from the event source.
        # A webhook named explicitly gets the event whatever its filter, as on DuckDB.
        inserted = await con.fetch(
            query("replay_enqueue"), plan.webhook_id, now, body, plan.event_id
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
    counts = await con.fetch(query("status_counts"), tenant)
    oldest = await con.fetchval(query("status_oldest_due"), tenant, now)
    # The scanner's lag; latest_seq is the highest seq to scan.
    cursor, lag, latest = await con.fetchrow(query("status_scanner"))
    webhooks = await con.fetch(query("status_webhooks"), tenant)
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
        events_rejected=await con.fetchval(query("status_rejected")),
    )


async def prune(
    con: Connection, delivered_before: datetime, log_before: datetime, batch: int
) -> Pruned:
    """One batch of each: delivered queue rows last changed before `delivered_before`,
    log rows attempted before `log_before`. The DELETE checks the row's state again: a
    row another transaction replayed meanwhile (no longer delivered) stays."""
    async with con.transaction():
        queue_rows = await con.execute(query("prune_delivered"), delivered_before, batch)
        log_rows = await con.execute(query("prune_attempts"), log_before, batch)
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
        await con.execute(query("failing_since"))
        rows = await con.fetch(query("auto_disable"), now, naive_utc(failing_before))
        disabled = [r[0] for r in rows]
        await park_inactive(con, disabled, now)
        await operational.upkeep(con, rows, reported_failing_before, now)
    return disabled
