"""The scan: events of the outbox table turned into deliveries, in one transaction.

Only one daemon scans at a time (scan_lock in queries.sql); the store keeps the cursor it
returns and decides when to look again (store.py). An event whose body cannot be built is
set aside in rejected_events, never in the way of the others. A scan asked to claim
(Store.scan's ClaimRequest) claims in the same transaction, once the rows are enqueued
and the fifo webhooks settled: the deliveries go to this daemon's workers with no claim
transaction of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any, NamedTuple

from webhookd import logs
from webhookd.events import body as event_body
from webhookd.store.base import Claim, ScanResult
from webhookd.store.postgres import admin, fifo
from webhookd.store.postgres.queries import query

log = logs.get("webhookd.store")

Connection = Any  # asyncpg has no type stubs
# A claim in the scan's transaction (claims.take with the store's arguments bound), from
# the webhooks the scan enqueued rows for, rate-limited ones left out: the claims, and
# whether it may have left rows due (its limit reached, webhooks passed over).
ScanClaim = Callable[[Connection, list[str]], Awaitable[tuple[list[Claim], bool]]]

# A scan of at most this many events (events that come one at a time) hands its claims
# out before its COMMIT (PostgresStore.scan). A larger one reads a backlog, where the
# attempt's wait for a COMMIT is nothing beside the queue's, and handing those out early
# measured 8-10 % less throughput at 10 webhooks (bench/README.md).
EARLY_EVENTS = 16


class Scanned(NamedTuple):
    result: ScanResult
    # The snapshot (text) up to which the scan read every event when it read fewer than
    # its batch, and whether it took it itself (not a batch's in progress): what tells
    # an events announcement it may not have seen (Listener.seen). None: another daemon
    # held the scan lock.
    snapshot: str | None = None
    fresh: bool = False


async def scan(
    con: Connection,
    scan_key: int,
    batch_size: int,
    max_event_bytes: int,
    cursor: int,
    schema: str,
    claim: ScanClaim | None = None,
    claimed: Callable[[Scanned], None] | None = None,
) -> Scanned:
    """`cursor` is the last one this daemon saw, returned as is when there is nothing new
    to read or another daemon is scanning. `claimed` is told the scan's answer before its
    COMMIT when it read at most EARLY_EVENTS events and claimed rows, none of them of a
    paced webhook (see PostgresStore.scan)."""
    async with con.transaction():
        if not await con.fetchval(query("scan_lock"), scan_key):
            return Scanned(ScanResult(0, 0, cursor))  # another daemon is scanning
        while True:
            rows = await con.fetch(query("scan_read"), batch_size, max_event_bytes)
            if not rows:
                raise RuntimeError(f"{schema}.scanner_cursor has lost its row 'main'")
            head = rows[0]
            events = [r for r in rows if r["event_id"] is not None]
            if events:
                break
            if head["fresh"]:
                return Scanned(ScanResult(0, 0, head["cursor_seq"]), head["target"], True)
            # The batch in progress had no event left: the next one starts now.
            await con.execute(query("scan_finish"))
        built_ids: list[str] = []
        bodies: list[bytes] = []
        rejected: dict[str, str] = {r["event_id"]: r["problem"] for r in events if r["problem"]}
        for r in events:
            if r["payload"] is None or r["event_id"] in rejected:
                continue
            try:
                bodies.append(build_body(r))
            except Exception as exc:  # set aside, never in the way of the others
                rejected[r["event_id"]] = f"cannot build its body: {type(exc).__name__}: {exc}"
                continue
            built_ids.append(r["event_id"])
        for event_id, problem in rejected.items():
            log.error(
                "an outbox event cannot be delivered; set aside in rejected_events",
                event_id=event_id,
                error=problem,
            )
        last = events[-1]
        enqueued, fifo_ids, _, claimable, rated = await con.fetchrow(
            query("scan_enqueue"),
            [r["event_id"] for r in events if r["event_id"] not in rejected],
            last["xid"],
            last["seq"],
            built_ids,
            bodies,
            list(rejected),
            list(rejected.values()),
            head["target"],
            len(events) < batch_size,
            claim is None,
        )
        if fifo_ids:
            await fifo.settle(con, fifo_ids)
        claims: list[Claim] = []
        left_due = True
        if claim is not None and enqueued:
            left = False
            if claimable:
                claims, left = await claim(con, sorted(claimable))
            left_due = bool(rated) or left
            if left_due:
                # Rows of webhooks this claim did not draw from may be due: the workers
                # (of every daemon) claim them as they would have without this claim.
                await con.execute(query("scan_notify"))
        scanned = Scanned(
            ScanResult(len(events), int(enqueued), last["seq"], claims, left_due),
            head["target"],
            head["fresh"],
        )
        if (
            claimed is not None
            and claims
            and len(events) <= EARLY_EVENTS
            and not any(c.paced for c in claims)
        ):
            claimed(scanned)
    return scanned


def build_body(row: Any) -> bytes:
    """The canonical body of an event a producer wrote in SQL, as the API would have built
    it (admin.build_body: replay builds the same bytes). A payload canonical JSON cannot
    carry (a number beyond a double's range) is sent as PostgreSQL prints it: still JSON."""
    event_id, event_type, occurred_at, payload = (
        row["event_id"],
        row["event_type"],
        row["occurred_at"],
        row["payload"],
    )
    try:
        return admin.build_body(event_id, event_type, occurred_at, payload)
    except (ValueError, RecursionError) as exc:
        log.warning(
            "an event's data has no canonical JSON form; sending it as stored",
            event_id=event_id,
            error=str(exc),
        )
        return event_body(event_id, event_type, occurred_at.replace(tzinfo=UTC), payload)
