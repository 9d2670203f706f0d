"""The store on a real database: enqueue, claims, outcomes, parking, rescue, pruning.

The tests before the "DuckDB engine only" line use the Store interface alone, so that
they hold for every engine; the ones after it test the DuckDB file, its writer thread
and its riders.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import duckdb
import pytest

from tests.conftest import DUCKDB_IN_PROCESS
from webhookd.api.render import webhook_json
from webhookd.events import parse_event
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import (
    RATE_LIMITED,
    Claim,
    DeliveryFilter,
    EventConflict,
    Ordering,
    Outcome,
    Owner,
    Store,
    WebhookLimits,
    WebhookPatch,
)
from webhookd.store.duckdb import batches
from webhookd.store.duckdb.admin import update_webhook
from webhookd.store.duckdb.fifo import fifo_ids
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.duckdb.writer import _Op
from webhookd.store.postgres import PostgresStore
from webhookd.store.records import utcnow

# Bounds a wait that only a broken store would run into, so that it fails, not hangs.
DEADLINE = 30.0


# `store` (tests/conftest.py) runs each test on every engine as the daemon opens it; these
# run on one engine alone, or on a DuckDBStore in this process (its writer threads, its file).
duckdb_only = pytest.mark.parametrize("store", ["duckdb"], indirect=True)
postgresql_only = pytest.mark.parametrize("store", ["postgresql"], indirect=True)
duckdb_in_process = pytest.mark.parametrize("store", [DUCKDB_IN_PROCESS], indirect=True)


def events(*specs: tuple[str, str]) -> list:  # type: ignore[type-arg]
    now = datetime.now().astimezone()
    return [
        parse_event({"id": eid, "type": etype, "data": {"n": i}}, i, now)
        for i, (eid, etype) in enumerate(specs)
    ]


async def hook(store: Store, types: list[str] | None = None) -> str:
    created = await store.create_webhook("http://127.0.0.1:9/h", types or [], new_secret(), "")
    webhook_id = created.webhook_id
    return webhook_id


def outcome(
    claim: Claim,
    status: Status,
    *,
    code: int = 500,
    due_in: float = 0,
    at: datetime | None = None,
) -> Outcome:
    """What a worker reports for `claim`: it carries the claim's lease, as workers' outcomes
    do, so that the store applies it only while the row still holds that lease."""
    now = utcnow() if at is None else at
    return Outcome(
        webhook_id=claim.webhook_id,
        event_id=claim.event_id,
        attempt=claim.attempt,
        status=status,
        next_attempt_at=now + timedelta(seconds=due_in) if status is Status.PENDING else None,
        attempted_at=now,
        duration_ms=1.0,
        status_code=code,
        error=None if code < 300 else f"HTTP {code}",
        response_excerpt="",
        outcome=str(status),
        claimed_until=claim.claimed_until,
    )


async def statuses(store: Store, **filters: str) -> dict[tuple[str, str], str]:
    page = await store.list_deliveries(DeliveryFilter(**filters), 1000, None)  # type: ignore[arg-type]
    return {(i["webhook_id"], i["event_id"]): i["status"] for i in page.items}


async def test_scan_enqueues_each_pair_once(store: Store) -> None:
    a, b = await hook(store), await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))
    first = await store.scan(500)
    assert (first.events, first.enqueued) == (2, 4)
    again = await store.scan(500)
    assert (again.events, again.enqueued) == (0, 0)
    assert set(await statuses(store)) == {(a, "e1"), (a, "e2"), (b, "e1"), (b, "e2")}


async def test_scan_advances_the_cursor_in_batches(store: Store) -> None:
    await hook(store)
    await store.ingest(events(*[(f"e{i}", "t") for i in range(7)]))
    seen = [await store.scan(3) for _ in range(4)]
    assert [r.events for r in seen] == [3, 3, 1, 0]
    assert [r.cursor for r in seen] == [3, 6, 7, 7]


async def test_scan_matches_event_types_and_skips_inactive(store: Store) -> None:
    only_paid = await hook(store, ["invoice.paid"])
    everything = await hook(store)
    off = await hook(store)
    await store.update_webhook(off, WebhookPatch(active=False))
    await store.ingest(events(("e1", "invoice.paid"), ("e2", "invoice.created")))
    await store.scan(500)
    assert set(await statuses(store)) == {
        (only_paid, "e1"),
        (everything, "e1"),
        (everything, "e2"),
    }


async def test_ingest_same_content_again_is_accepted_without_a_duplicate(
    store: Store,
) -> None:
    first = await store.ingest(events(("e1", "t")))
    again = await store.ingest(events(("e1", "t")))
    assert (first.inserted, again.inserted) == (1, 0)
    assert again.ids == ["e1"]
    with pytest.raises(EventConflict) as info:
        await store.ingest(events(("e1", "other.type")))
    assert info.value.event_ids == ["e1"]


async def test_a_conflicting_batch_stores_nothing(store: Store) -> None:
    await store.ingest(events(("e1", "t")))
    with pytest.raises(EventConflict):
        await store.ingest(events(("e2", "t"), ("e1", "changed")))
    await hook(store)
    await store.scan(500)
    assert {k[1] for k in await statuses(store)} == {"e1"}


async def test_claim_takes_only_due_rows(store: Store) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))
    await store.scan(500)
    claims = await store.claim(10, 8, 30)
    assert {c.event_id for c in claims} == {"e1", "e2"}
    assert all(c.attempt == 1 for c in claims)
    # e1 fails and is due in an hour; e2 fails and is due now
    await store.record(outcome(claims[0], Status.PENDING, due_in=3600))
    await store.record(outcome(claims[1], Status.PENDING, due_in=0))
    again = await store.claim(10, 8, 30)
    assert [c.event_id for c in again] == [claims[1].event_id]
    assert again[0].attempt == 2


async def test_claim_respects_the_per_webhook_cap(store: Store) -> None:
    slow, fast = await hook(store), await hook(store)
    await store.ingest(events(*[(f"e{i}", "t") for i in range(10)]))
    await store.scan(500)
    first = await store.claim(100, 3, 30)
    by_hook = {w: sum(c.webhook_id == w for c in first) for w in (slow, fast)}
    assert by_hook == {slow: 3, fast: 3}
    # the cap counts rows still inflight: the slow webhook gets nothing more
    for c in first:
        if c.webhook_id == fast:
            await store.record(outcome(c, Status.DELIVERED, code=204))
    second = await store.claim(100, 3, 30)
    assert {c.webhook_id for c in second} == {fast}
    assert len(second) == 3


async def test_inflight_rows_are_not_claimed_twice(store: Store) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    assert len(await store.claim(10, 8, 30)) == 1
    assert await store.claim(10, 8, 30) == []


async def test_outcomes_write_the_log_and_the_row(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    (claim,) = await store.claim(10, 8, 30)
    await store.record(outcome(claim, Status.PENDING))
    (claim2,) = await store.claim(10, 8, 30)
    await store.record(outcome(claim2, Status.DEAD))
    page = await store.list_deliveries(DeliveryFilter(webhook_id=wid), 10, None)
    (row,) = page.items
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("dead", 2, 500)
    log = await store.list_attempts(wid, "e1")
    assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 500), (2, 500)]


async def test_a_late_outcome_of_a_superseded_claim_changes_nothing(store: Store) -> None:
    """An outcome applies only while its row still holds the lease of its claim. Here the
    lease of a claim runs out, the lease rescuer re-drives the row and a new claim takes
    it; then the first worker comes back, with a success. The row must stay exactly as the
    new claim left it: inflight, its attempts, its lease, its last status code.

    The late attempt's log row is still written (today the log INSERT does not look at
    the lease): the receiver did get that POST, and the log is the record of every
    attempt made, so a late attempt shows there with the attempt number of its claim."""
    wid = await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    (first,) = await store.claim(10, 8, 30)
    await store.record(outcome(first, Status.PENDING, code=503))  # attempt 1 fails
    (late,) = await store.claim(10, 8, 30)  # attempt 2 ...
    assert (
        await store.rescue_expired(utcnow() + timedelta(minutes=1)) == 1
    )  # ... outlives its lease
    (current,) = await store.claim(10, 8, 30)  # and attempt 2 again, under a new lease
    assert (late.attempt, current.attempt) == (2, 2)
    assert late.claimed_until != current.claimed_until
    (held,) = (await store.list_deliveries(DeliveryFilter(), 10, None)).items
    assert (held["status"], held["attempts"], held["last_status_code"]) == ("inflight", 1, 503)

    await store.record(outcome(late, Status.DELIVERED, code=204))

    (after,) = (await store.list_deliveries(DeliveryFilter(), 10, None)).items
    assert after == held  # status, attempts, lease, codes, timestamps: all untouched
    assert await store.claim(10, 8, 30) == []  # still held by the current claim
    log = await store.list_attempts(wid, "e1")
    assert [(a["attempt"], a["status_code"]) for a in log] == [(1, 503), (2, 204)]
    # The current claim's outcome is the one that counts.
    await store.record(outcome(current, Status.DEAD, code=500))
    (done,) = (await store.list_deliveries(DeliveryFilter(), 10, None)).items
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("dead", 2, 500)
    assert done["lease_until"] is None


async def test_deactivating_parks_pending_rows_and_enabling_redrives(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))
    await store.scan(500)
    (c1, c2) = await store.claim(10, 8, 30)
    await store.record(outcome(c1, Status.PENDING, due_in=3600))
    await store.update_webhook(wid, WebhookPatch(active=False))
    assert (await statuses(store))[(wid, c1.event_id)] == "parked"
    assert (await statuses(store))[(wid, c2.event_id)] == "inflight"
    # the inflight one fails after the webhook was disabled: parked, not retried
    await store.record(outcome(c2, Status.PENDING))
    assert set((await statuses(store)).values()) == {"parked"}
    assert await store.claim(10, 8, 30) == []
    await store.update_webhook(wid, WebhookPatch(active=True))
    assert set((await statuses(store)).values()) == {"pending"}
    assert len(await store.claim(10, 8, 30)) == 2


async def test_removed_webhook_rows_are_parked_not_dropped(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    await store.delete_webhook(wid)
    assert await statuses(store) == {(wid, "e1"): "parked"}
    assert await store.claim(10, 8, 30) == []


async def test_rescue_expired_leaves_live_leases(store: Store) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))
    await store.scan(500)
    await store.claim(1, 8, 0.001)  # a lease that runs out at once
    await store.claim(1, 8, 3600)
    assert await store.rescue_expired(utcnow() + timedelta(seconds=1)) == 1
    assert sorted((await statuses(store)).values()) == ["inflight", "pending"]


async def test_gone_deactivates_the_webhook_and_parks(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))
    await store.scan(500)
    (c1,) = await store.claim(1, 8, 30)
    await store.record(replace(outcome(c1, Status.PARKED, code=410), deactivate_webhook=True))
    hook_row = webhook_json(await store.get_webhook(wid))
    assert hook_row["active"] is False
    assert "410" in hook_row["disabled_reason"]
    assert set((await statuses(store)).values()) == {"parked"}


async def test_redrive_dead_and_since(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))
    await store.scan(500)
    for c in await store.claim(10, 8, 30):
        await store.record(outcome(c, Status.DEAD))
    assert await store.redrive(Status.DEAD, None, utcnow() + timedelta(hours=1)) == 0
    assert await store.redrive(Status.DEAD, wid, None) == 2
    claims = await store.claim(10, 8, 30)
    # a fresh budget: attempt 2 overall, the first since the redrive
    assert {(c.attempt, c.budget_attempt) for c in claims} == {(2, 1)}


async def test_redrive_since_moves_only_rows_that_failed_after_the_time(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("early", "t"), ("recent", "t")))
    await store.scan(500)
    claims = {c.event_id: c for c in await store.claim(10, 8, 30)}
    now = utcnow()
    await store.record(outcome(claims["early"], Status.DEAD, at=now - timedelta(hours=2)))
    await store.record(outcome(claims["recent"], Status.DEAD, at=now - timedelta(minutes=1)))
    # `since` as the API passes it: an aware time, here between the two failures.
    since = datetime.now(UTC) - timedelta(hours=1)
    assert await store.redrive(Status.DEAD, None, since) == 1
    assert await statuses(store) == {(wid, "early"): "dead", (wid, "recent"): "pending"}
    (again,) = await store.claim(10, 8, 30)
    assert again.event_id == "recent"


async def test_replay_delivers_again_and_restores_pruned_rows(store: Store) -> None:
    wid = await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    (c,) = await store.claim(10, 8, 30)
    await store.record(outcome(c, Status.DELIVERED, code=204))
    assert await store.replay("e1", None) == 1
    assert await statuses(store) == {(wid, "e1"): "pending"}
    (c,) = await store.claim(10, 8, 30)
    await store.record(outcome(c, Status.DELIVERED, code=204))
    pruned = await store.prune(utcnow() + timedelta(seconds=1), utcnow() - timedelta(days=1), 100)
    assert pruned.queue_rows == 1
    assert await statuses(store) == {}
    assert await store.replay("e1", wid) == 1
    assert await statuses(store) == {(wid, "e1"): "pending"}


async def test_prune_leaves_pending_and_dead_rows(store: Store) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t"), ("e3", "t")))
    await store.scan(500)
    (c1,) = await store.claim(1, 8, 30)
    (c2,) = await store.claim(1, 8, 30)
    await store.record(outcome(c1, Status.DELIVERED, code=204))
    await store.record(outcome(c2, Status.DEAD))
    await store.release([(c.webhook_id, c.event_id) for c in await store.claim(10, 8, 30)])
    later = utcnow() + timedelta(days=400)
    pruned = await store.prune(later, later, 1000)
    assert pruned.queue_rows == 1
    assert pruned.log_rows == 2
    assert sorted((await statuses(store)).values()) == ["dead", "pending"]


async def test_auto_disable_deactivates_a_webhook_failing_for_the_window(
    store: Store,
) -> None:
    failing, healthy = await hook(store), await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    for c in await store.claim(10, 8, 30):
        status = Status.PENDING if c.webhook_id == failing else Status.DELIVERED
        await store.record(outcome(c, status, code=500 if c.webhook_id == failing else 204))
    assert await store.auto_disable(utcnow() - timedelta(hours=1)) == []
    assert await store.auto_disable(utcnow() + timedelta(seconds=1)) == [failing]
    assert (await store.get_webhook(failing)).active is False
    assert (await store.get_webhook(healthy)).active is True
    assert (await statuses(store))[(failing, "e1")] == "parked"


async def test_replay_of_an_event_not_yet_scanned_leaves_the_scanner_going(
    store: Store,
) -> None:
    wh = await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t"), ("e3", "t")))
    # Before any scan: the replay enqueues e2, due now, and it counts. (DuckDB scans up to
    # e2 first; PostgreSQL inserts e2's row and the scanner's insert skips it.)
    assert await store.replay("e2", None) == 1
    while (await store.scan(500)).events:
        pass
    assert await statuses(store) == {(wh, e): "pending" for e in ("e1", "e2", "e3")}
    claimed = await store.claim(10, 8, 60.0)
    assert sorted(c.event_id for c in claimed) == ["e1", "e2", "e3"]  # one row each


async def test_a_re_post_in_a_busy_transaction_fails_nothing_else(store: Store) -> None:
    """Ingests trust the primary key; an id already stored fails their shared transaction,
    and each is then retried on its own: the re-post is accepted, the conflict refused,
    the new event stored."""
    await hook(store)
    (first,) = events(("e1", "t"))
    await store.ingest([first])
    again = store.ingest([first])
    clash = store.ingest([replace(first, payload='{"n":99}')])
    fresh = store.ingest(events(("e2", "t")))
    results = await asyncio.gather(again, clash, fresh, return_exceptions=True)
    assert results[0].inserted == 0  # type: ignore[union-attr]
    assert isinstance(results[1], EventConflict) and results[1].event_ids == ["e1"]
    assert results[2].inserted == 1  # type: ignore[union-attr]
    scanned = await store.scan(500)
    assert (scanned.events, scanned.enqueued) == (2, 2)


# --- per-webhook settings: fifo ordering, max_in_flight, rate_limit (issue 12) -----------


async def paced_hook(store: Store, **limits: Any) -> str:
    created = await store.create_webhook(
        "http://127.0.0.1:9/h", [], new_secret(), "", WebhookLimits(**limits)
    )
    webhook_id = created.webhook_id
    return webhook_id


async def enqueue(store: Store, n: int, prefix: str = "e") -> list[str]:
    """n events e0..e{n-1}, in seq order, scanned into the queue."""
    ids = [f"{prefix}{i}" for i in range(n)]
    await store.ingest(events(*[(i, "t") for i in ids]))
    while (await store.scan(500)).events:
        pass
    return ids


async def rows_of(store: Store, webhook_id: str) -> dict[str, dict[str, Any]]:
    page = await store.list_deliveries(DeliveryFilter(webhook_id=webhook_id), 1000, None)
    return {i["event_id"]: i for i in page.items}


async def drain_fifo(store: Store, webhook_id: str, fail: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Claim and deliver a fifo webhook's rows one by one, as workers would (the events in
    `fail` fail once first); the event ids in the order they were claimed."""
    order: list[str] = []
    failed: set[str] = set()
    for _ in range(100):
        claims = await store.claim(10, 8, 30)
        if not claims:
            break
        assert len(claims) == 1, claims
        (claim,) = claims
        assert claim.webhook_id == webhook_id
        order.append(claim.event_id)
        if claim.event_id in fail and claim.event_id not in failed:
            failed.add(claim.event_id)
            await store.record(outcome(claim, Status.PENDING, due_in=0))
        else:
            await store.record(outcome(claim, Status.DELIVERED, code=204))
    return order


async def test_a_fifo_webhook_gets_its_head_alone_and_in_seq_order(store: Store) -> None:
    fifo = await paced_hook(store, ordering=Ordering.FIFO)
    other = await hook(store)
    ids = await enqueue(store, 5)
    claims = await store.claim(100, 8, 30)
    # The other webhook takes all five; the fifo webhook its head only.
    assert sorted(c.event_id for c in claims if c.webhook_id == other) == ids
    (head,) = [c for c in claims if c.webhook_id == fifo]
    assert head.event_id == "e0" and head.cap == 1 and head.paced
    # Behind the head: pending, with no time (not due), nothing attempted.
    rows = await rows_of(store, fifo)
    assert rows["e0"]["status"] == "inflight"
    assert {e: (r["status"], r["next_attempt_at"], r["attempts"]) for e, r in rows.items()} == {
        "e0": ("inflight", rows["e0"]["next_attempt_at"], 0),
        **{e: ("pending", None, 0) for e in ids[1:]},
    }
    assert await store.claim(100, 8, 30) == []  # the head is inflight: nothing more
    # The head fails: it stays the head (its retry is due now), the rest keep waiting.
    await store.record(outcome(head, Status.PENDING, due_in=0))
    (again,) = await store.claim(100, 8, 30)
    assert (again.event_id, again.attempt) == ("e0", 2)
    await store.record(outcome(again, Status.DELIVERED, code=204))
    assert await drain_fifo(store, fifo, fail={"e2"}) == ["e1", "e2", "e2", "e3", "e4"]
    assert {r["status"] for r in (await rows_of(store, fifo)).values()} == {"delivered"}


async def test_a_dead_fifo_head_lets_the_next_event_through(store: Store) -> None:
    fifo = await paced_hook(store, ordering=Ordering.FIFO)
    await enqueue(store, 3)
    (head,) = await store.claim(10, 8, 30)
    await store.record(outcome(head, Status.PENDING, due_in=3600))  # blocked for an hour
    assert await store.claim(10, 8, 30) == []
    await store.rescue_expired(utcnow())  # nothing expired; settles, changes nothing
    assert await store.claim(10, 8, 30) == []
    rows = await rows_of(store, fifo)
    assert [e for e, r in rows.items() if r["next_attempt_at"]] == ["e0"]
    blocked = (await store.status()).fifo_blocked[fifo]
    assert (blocked.event_id, blocked.attempts) == ("e0", 1)
    assert abs((utcnow() - blocked.since).total_seconds()) < 60
    # Its retry, when it comes, goes dead: the next event is due at once.
    second = await _claim_when_due(store, fifo, "e0")
    await store.record(outcome(second, Status.DEAD))
    assert (await store.status()).fifo_blocked == {}
    (e1,) = await store.claim(10, 8, 30)
    assert (e1.event_id, e1.attempt) == ("e1", 1)


async def _claim_when_due(store: Store, webhook_id: str, event_id: str) -> Claim:
    """Bring a row's retry forward (as its time coming would) and claim it."""
    await store.update_webhook(webhook_id, WebhookPatch(active=False))
    await store.update_webhook(webhook_id, WebhookPatch(active=True))  # due now: re-driven
    (claim,) = await store.claim(10, 8, 30)
    assert claim.event_id == event_id
    return claim


async def test_fifo_order_holds_through_dead_redrive_and_replay(store: Store) -> None:
    fifo = await paced_hook(store, ordering=Ordering.FIFO)
    ids = await enqueue(store, 4)
    for expected in ids[:3]:  # e0, e1, e2 die in turn; each lets the next through
        (claim,) = await store.claim(10, 8, 30)
        assert claim.event_id == expected
        await store.record(outcome(claim, Status.DEAD))
    (e3,) = await store.claim(10, 8, 30)
    assert e3.event_id == "e3"
    assert (await store.status()).fifo_blocked == {}  # e3's first attempt: not blocked yet
    # Redriven while e3 is inflight: they wait for it, then go in seq order.
    assert await store.redrive(Status.DEAD, fifo, None) == 3
    assert await store.claim(10, 8, 30) == []
    await store.record(outcome(e3, Status.PENDING, due_in=0))  # e3 fails: e0 is the head now
    assert await drain_fifo(store, fifo) == ["e0", "e1", "e2", "e3"]
    # Replayed out of order (e3, then e1): delivered in order, the lower seq first.
    assert await store.replay("e3", fifo) == 1
    assert await store.replay("e1", fifo) == 1
    assert await drain_fifo(store, fifo) == ["e1", "e3"]


async def test_switching_to_fifo_delivers_pending_rows_in_order_from_the_oldest(
    store: Store,
) -> None:
    wid = await hook(store)
    ids = await enqueue(store, 6)
    (first, second) = await store.claim(2, 8, 30)  # two inflight when the switch comes
    updated = webhook_json(await store.update_webhook(wid, WebhookPatch(ordering=Ordering.FIFO)))
    assert updated["ordering"] == "fifo"
    rows = await rows_of(store, wid)
    waiting = [e for e, r in rows.items() if r["status"] == "pending"]
    assert sorted(waiting) == ids[2:]
    # e0 and e1, inflight, come first: every pending row waits behind them.
    assert [e for e in waiting if rows[e]["next_attempt_at"] is not None] == []
    assert await store.claim(10, 8, 30) == []
    await store.record(outcome(first, Status.DELIVERED, code=204))
    assert await store.claim(10, 8, 30) == []
    await store.record(outcome(second, Status.DELIVERED, code=204))
    assert await drain_fifo(store, wid) == ids[2:]
    # And back: rows are due again together.
    await enqueue(store, 3, prefix="x")
    await store.update_webhook(wid, WebhookPatch(ordering=Ordering.NONE))
    assert sorted(c.event_id for c in await store.claim(10, 8, 30)) == ["x0", "x1", "x2"]


async def test_a_claim_carries_the_webhooks_url_and_secrets_as_they_are_now(
    store: Store,
) -> None:
    """A change of URL or secret applies from the next claim on, and a deactivated
    webhook's rows are claimed no more (DuckDB's writer remembers webhooks between
    claims: this is what it must forget)."""
    wid = await hook(store)
    await enqueue(store, 4)
    (first,) = await store.claim(1, 8, 30)
    assert first.url == "http://127.0.0.1:9/h"
    before = first.secrets
    await store.update_webhook(wid, WebhookPatch(url="http://127.0.0.1:9/moved"))
    (second,) = await store.claim(1, 8, 30)
    assert (second.url, second.secrets) == ("http://127.0.0.1:9/moved", before)
    await store.rotate_secret(wid, new_secret(), 3600)
    (third,) = await store.claim(1, 8, 30)
    assert len(third.secrets) == 2 and third.secrets[1:] == before
    await store.update_webhook(wid, WebhookPatch(active=False))
    assert await store.claim(10, 8, 30) == []


@duckdb_in_process
async def test_duckdb_writer_forgets_the_fifo_webhooks_a_rolled_back_transaction_saw(
    store: Store,
) -> None:
    """The main writer remembers which webhooks are fifo between transactions; what a
    transaction read of its own uncommitted switch must not outlive its rollback, or the
    writer would hold back a plain webhook's rows as if they waited behind a fifo head."""
    assert isinstance(store, DuckDBStore)
    wid = await hook(store)

    def switch_then_fail(con: Any, payloads: list[None]) -> list[None]:
        update_webhook(con, [(wid, WebhookPatch(ordering=Ordering.FIFO))])
        assert fifo_ids(con) == [wid]  # seen, and remembered, inside the transaction
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError, match="rolled back"):
        await store._write(switch_then_fail, None)
    assert await store._write(lambda con, payloads: [fifo_ids(con)], None) == []
    ids = await enqueue(store, 3)
    assert sorted(c.event_id for c in await store.claim(10, 8, 30)) == ids


async def test_max_in_flight_overrides_per_webhook_concurrency(store: Store) -> None:
    narrow = await paced_hook(store, max_in_flight=2)
    wide = await paced_hook(store, max_in_flight=12)
    plain = await hook(store)
    await enqueue(store, 20)
    claims = await store.claim(100, 5, 30)
    by_hook = {w: sum(c.webhook_id == w for c in claims) for w in (narrow, wide, plain)}
    assert by_hook == {narrow: 2, wide: 12, plain: 5}
    assert {c.webhook_id: (c.cap, c.paced) for c in claims} == {
        narrow: (2, False),
        wide: (12, False),
        plain: (None, False),
    }
    # A daemon asking less (a silent receiver, say) gets less.
    assert await store.claim(100, 5, 30, {wide: 11, narrow: 1}) == []
    # Cleared: the daemon's setting again.
    cleared = webhook_json(await store.update_webhook(narrow, WebhookPatch(max_in_flight=None)))
    assert cleared["max_in_flight"] is None
    assert {c.webhook_id: c.cap for c in await store.claim(100, 5, 30)} == {narrow: None}


async def test_a_rate_limit_serves_its_bucket_and_moves_the_rest(store: Store) -> None:
    limited = await paced_hook(store, rate_limit=4.0)
    plain = await hook(store)
    await enqueue(store, 20)
    started = utcnow()
    claims = await store.claim(100, 50, 30)
    again = await store.claim(100, 50, 30)  # at once: the bucket is empty
    assert sum(c.webhook_id == limited for c in claims) == 4  # a full bucket: a burst of 4
    assert all(c.paced and c.cap is None for c in claims if c.webhook_id == limited)
    assert sum(c.webhook_id == plain for c in claims) == 20
    assert again == []
    # The 16 others were moved to the next free slots, 0.25 s apart: no attempt, no log row.
    rows = await rows_of(store, limited)
    waiting = sorted(
        (r for r in rows.values() if r["status"] == "pending"), key=lambda r: r["next_attempt_at"]
    )
    assert len(waiting) == 16
    assert {(r["attempts"], r["last_error"]) for r in waiting} == {(0, RATE_LIMITED)}
    times = [datetime.fromisoformat(r["next_attempt_at"][:-1]) for r in waiting]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(abs(g - 0.25) < 1e-3 for g in gaps), gaps
    assert 0 < (times[0] - started).total_seconds() <= 0.3
    for r in waiting[:3]:
        assert await store.list_attempts(limited, r["event_id"]) == []
    # At its slot a row is due, and a token is there for it.
    await asyncio.sleep(max(0.0, (times[0] - utcnow()).total_seconds()) + 0.01)
    (next_one, *more) = await store.claim(100, 50, 30)
    assert next_one.event_id == waiting[0]["event_id"]
    # Cleared: the rows waiting for it are due now, all at once.
    await store.update_webhook(limited, WebhookPatch(rate_limit=None))
    after = await store.claim(100, 50, 30)
    assert len(more + after) == 15 and not any(c.paced for c in after)
    assert (await store.get_webhook(limited)).rate_limit is None


async def test_new_rows_of_a_rate_limited_webhook_queue_after_its_last_slot(store: Store) -> None:
    limited = await paced_hook(store, rate_limit=0.5)  # a burst of one, then one every 2 s
    await enqueue(store, 6)
    assert len(await store.claim(100, 50, 30)) == 1
    last = max(r["next_attempt_at"] for r in (await rows_of(store, limited)).values())
    await enqueue(store, 3, prefix="x")
    assert await store.claim(100, 50, 30) == []  # no token yet: moved too
    rows = await rows_of(store, limited)
    later = sorted(rows[e]["next_attempt_at"] for e in ("x0", "x1", "x2"))
    assert later[0] > last  # behind the rows already waiting, not on their slots
    slots = [r["next_attempt_at"] for r in rows.values() if r["status"] == "pending"]
    assert len(set(slots)) == len(slots) == 8  # one row per slot


async def test_fifo_with_a_rate_limit_moves_its_head_only(store: Store) -> None:
    wid = await paced_hook(store, ordering=Ordering.FIFO, rate_limit=1.0)
    await enqueue(store, 3)
    (e0,) = await store.claim(10, 8, 30)
    await store.record(outcome(e0, Status.DELIVERED, code=204))
    assert await store.claim(10, 8, 30) == []  # e1 is the head, its token a second away
    rows = await rows_of(store, wid)
    assert rows["e1"]["last_error"] == RATE_LIMITED and rows["e1"]["next_attempt_at"]
    assert rows["e2"]["next_attempt_at"] is None


async def test_webhook_settings_are_listed_and_patched(store: Store) -> None:
    wid = await paced_hook(store, rate_limit=2.5, max_in_flight=3, ordering=Ordering.FIFO)
    shown = webhook_json(await store.get_webhook(wid))
    assert (shown["rate_limit"], shown["max_in_flight"], shown["ordering"]) == (2.5, 3, "fifo")
    (listed,) = (await store.list_webhooks(10, None)).items
    assert webhook_json(listed) == shown
    same = webhook_json(await store.update_webhook(wid, WebhookPatch(description="x")))
    assert (same["rate_limit"], same["max_in_flight"], same["ordering"]) == (2.5, 3, "fifo")
    changed = webhook_json(
        await store.update_webhook(
            wid, WebhookPatch(rate_limit=None, max_in_flight=None, ordering=Ordering.NONE)
        )
    )
    assert (changed["rate_limit"], changed["max_in_flight"], changed["ordering"]) == (
        None,
        None,
        "none",
    )
    plain = webhook_json(await store.get_webhook(await hook(store)))
    assert (plain["rate_limit"], plain["max_in_flight"], plain["ordering"]) == (None, None, "none")


async def two_stores(store: Store, request: pytest.FixtureRequest) -> Store:
    """A second daemon on the store's schema (PostgreSQL), closed by the caller."""
    assert isinstance(store, PostgresStore)
    other = PostgresStore(request.getfixturevalue("pg").url, schema=store.schema, pool_size=4)
    await other.open()
    return other


@postgresql_only
async def test_daemons_on_one_schema_share_one_bucket(
    store: Store, request: pytest.FixtureRequest
) -> None:
    other = await two_stores(store, request)
    try:
        limited = await paced_hook(store, rate_limit=0.5)  # a burst of 1, then 1 every 2 s
        await enqueue(store, 6)
        got = await asyncio.gather(*(s.claim(100, 50, 30) for s in (store, other, store, other)))
        assert sum(len(g) for g in got) == 1  # one bucket for every daemon
        # New rows, due now, for both daemons: the bucket they share is empty.
        await enqueue(store, 4, prefix="x")
        got = await asyncio.gather(*(s.claim(100, 50, 30) for s in (other, store)))
        assert sum(len(g) for g in got) == 0
        rows = await rows_of(store, limited)
        waiting = [r["next_attempt_at"] for r in rows.values() if r["status"] == "pending"]
        assert len(waiting) == 9 and len(set(waiting)) == 9  # each on a slot of its own
    finally:
        await other.close()


@postgresql_only
async def test_daemons_on_one_schema_share_one_fifo_head(
    store: Store, request: pytest.FixtureRequest
) -> None:
    other = await two_stores(store, request)
    try:
        wid = await paced_hook(store, ordering=Ordering.FIFO)
        ids = await enqueue(store, 6)
        order: list[str] = []
        daemons = [store, other]
        for turn in range(len(ids)):
            got = await asyncio.gather(*(s.claim(10, 8, 30) for s in daemons))
            claims = [c for g in got for c in g]
            assert len(claims) == 1, claims  # one head for both daemons
            order.append(claims[0].event_id)
            owner = daemons[0] if got[0] else daemons[1]
            # The outcome is written by the daemon that claimed it; the next claim comes
            # from the other one, which must see the next head.
            await owner.record(outcome(claims[0], Status.DELIVERED, code=204))
            daemons.reverse()
            assert turn < len(ids)
        assert order == ids
        assert {r["status"] for r in (await rows_of(store, wid)).values()} == {"delivered"}
    finally:
        await other.close()


# --- DuckDB engine only ------------------------------------------------------------
# The file itself (reopened, edited with duckdb.connect), its migrations, its one writer
# thread with group commit and riders, and the start-up rescue of every inflight row
# (the file lock proves their owner is gone; a shared PostgreSQL database rescues none).


def _noted(con: object, payloads: list[str]) -> list[str]:
    return list(payloads)


def _other(con: object, payloads: list[str]) -> list[str]:
    return list(payloads)


@duckdb_in_process
async def test_enqueue_is_idempotent_even_if_the_cursor_is_rewound(
    store: DuckDBStore, tmp_path: Path
) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    await store.close()
    con = duckdb.connect(str(tmp_path / "q.duckdb"))
    con.execute("UPDATE scanner_cursor SET seq = 0")
    con.close()
    reopened = DuckDBStore(tmp_path / "q.duckdb")
    await reopened.open()
    try:
        result = await reopened.scan(500)
        assert (result.events, result.enqueued) == (1, 0)
        assert len(await statuses(reopened)) == 1
    finally:
        await reopened.close()
    await store.open()  # the fixture closes it again


@duckdb_in_process
async def test_outcomes_queued_during_a_transaction_share_the_next_one(
    store: DuckDBStore,
) -> None:
    """Group commit: 200 outcomes that arrive while the writer is busy are committed
    together, in the one transaction after the busy one, however fast the machine."""
    await hook(store)
    await store.ingest(events(*[(f"e{i}", "t") for i in range(200)]))
    await store.scan(500)
    claims = await store.claim(500, 500, 30)
    assert len(claims) == 200
    writer = store._writer
    assert writer is not None
    entered, release = threading.Event(), threading.Event()

    def busy(con: object, payloads: list[None]) -> list[None]:
        entered.set()
        release.wait(DEADLINE)
        return list(payloads)

    before = writer.transactions
    holding = writer.submit(busy, None)
    assert await asyncio.to_thread(entered.wait, DEADLINE)  # the writer is inside it now
    recorded = [store.record(outcome(c, Status.DELIVERED, code=204)) for c in claims]
    release.set()
    await holding
    await asyncio.gather(*recorded)
    assert writer.transactions == before + 2  # the busy one, and one for all 200 outcomes
    assert set((await statuses(store)).values()) == {"delivered"}


@duckdb_in_process
async def test_a_failing_operation_fails_alone(store: DuckDBStore) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    (claim,) = await store.claim(10, 8, 30)

    def broken(con: object, payloads: object) -> list[None]:
        raise RuntimeError("boom")

    assert store._writer is not None
    bad = store._writer.submit(broken, None)
    good = store.record(outcome(claim, Status.DELIVERED, code=204))
    results = await asyncio.gather(bad, good, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1] is True  # committed (DuckDB does not ask what is due: True)
    assert set((await statuses(store)).values()) == {"delivered"}


@duckdb_only
async def test_rescue_orphans_returns_inflight_rows(store: Store) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    await store.claim(10, 8, 30)
    assert isinstance(store, Owner)
    assert await store.rescue_orphans() == 1
    assert set((await statuses(store)).values()) == {"pending"}
    assert len(await store.claim(10, 8, 30)) == 1


async def test_migrations_are_applied_once(tmp_path: Path) -> None:
    s = DuckDBStore(tmp_path / "m.duckdb")
    await s.open()
    assert s.migrations_applied == [1, 2, 3, 4, 5, 6, 7]
    await s.close()
    s = DuckDBStore(tmp_path / "m.duckdb")
    await s.open()
    assert s.migrations_applied == []
    await s.close()


async def test_a_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    from importlib import resources

    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    sql = resources.files("webhookd.store").joinpath("sql", "duckdb", "001_initial.sql")
    con.execute(sql.read_text())
    con.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
        "applied_at TIMESTAMP NOT NULL)"
    )
    con.execute("INSERT INTO schema_migrations VALUES (1, '001_initial.sql', now()::TIMESTAMP)")
    con.execute(
        "INSERT INTO webhooks (webhook_id, url, secret, event_types, active, description, "
        "created_at, updated_at) VALUES ('wh_old', 'http://127.0.0.1:9/', 'whsec_x', [], true, "
        "'', now()::TIMESTAMP, now()::TIMESTAMP)"
    )
    con.close()
    s = DuckDBStore(path)
    await s.open()
    try:
        assert s.migrations_applied == [2, 3, 4, 5, 6, 7]
        assert (webhook_json(await s.get_webhook("wh_old")))["url"] == "http://127.0.0.1:9/"
    finally:
        await s.close()
    con = duckdb.connect(str(path))
    reset = con.execute("SELECT health_reset_at FROM webhooks").fetchone()
    con.close()
    assert reset is not None and reset[0] is not None


@postgresql_only
async def test_a_version_1_schema_gets_each_rows_seq(
    store: Store, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL's migration 2, on a schema with rows: every queue row gets its event's
    seq, so a webhook switched to fifo delivers them in the events' order."""
    assert isinstance(store, PostgresStore)
    wid = await hook(store)
    await store.ingest(events(*[(f"e{i}", "t") for i in range(3)]))
    await store.scan(500)
    await store.close()
    con = await asyncpg.connect(
        request.getfixturevalue("pg").url, server_settings={"search_path": store.schema}
    )
    try:
        await con.execute(
            "DELETE FROM schema_migrations WHERE version = 2;"
            "ALTER TABLE webhook_delivery_queue DROP COLUMN seq;"
            "ALTER TABLE webhooks DROP COLUMN rate_limit, DROP COLUMN max_in_flight, "
            "DROP COLUMN ordering, DROP COLUMN rate_tokens, DROP COLUMN rate_refilled_at, "
            "DROP COLUMN rate_next_at"
        )
    finally:
        await con.close()
    await store.open()
    assert store.migrations_applied == [2]
    con = await asyncpg.connect(
        request.getfixturevalue("pg").url, server_settings={"search_path": store.schema}
    )
    try:
        copied = await con.fetchval(
            "SELECT count(*) FROM webhook_delivery_queue q JOIN pipeline_events e "
            "USING (event_id) WHERE q.seq = e.seq AND e.seq > 0"
        )
    finally:
        await con.close()
    assert copied == 3
    await store.update_webhook(wid, WebhookPatch(ordering=Ordering.FIFO))
    assert await drain_fifo(store, wid) == ["e0", "e1", "e2"]


async def test_a_version_2_database_gets_each_rows_seq(tmp_path: Path) -> None:
    """Migration 3 copies every queue row's event seq, so a webhook switched to fifo later
    delivers what was queued before in the events' order."""
    path = tmp_path / "v2.duckdb"
    s = DuckDBStore(path)
    await s.open()
    wid = await hook(s)
    await s.ingest(events(*[(f"e{i}", "t") for i in range(3)]))
    await s.scan(500)
    await s.close()
    con = duckdb.connect(str(path))
    con.execute("UPDATE webhook_delivery_queue SET seq = NULL")
    con.execute("DELETE FROM schema_migrations WHERE version = 3")
    for column in ("rate_limit", "max_in_flight", "ordering", "rate_tokens"):
        con.execute(f"ALTER TABLE webhooks DROP COLUMN {column}")
    for column in ("rate_refilled_at", "rate_next_at"):
        con.execute(f"ALTER TABLE webhooks DROP COLUMN {column}")
    con.execute("ALTER TABLE webhook_delivery_queue DROP COLUMN seq")
    con.close()
    s = DuckDBStore(path)
    await s.open()
    await s.close()
    con = duckdb.connect(str(path))
    copied = con.execute(
        "SELECT count(*) FROM webhook_delivery_queue q JOIN pipeline_events e "
        "USING (event_id) WHERE q.seq = e.seq AND e.seq > 0"
    ).fetchone()
    con.close()
    assert copied == (3,)
    s = DuckDBStore(path)
    await s.open()
    try:
        assert s.migrations_applied == []
        assert (webhook_json(await s.get_webhook(wid)))["ordering"] == "none"
        await s.update_webhook(wid, WebhookPatch(ordering=Ordering.FIFO))
        assert await drain_fifo(s, wid) == ["e0", "e1", "e2"]
    finally:
        await s.close()


@duckdb_in_process
async def test_a_queue_row_ahead_of_the_cursor_does_not_stop_the_scan(
    store: DuckDBStore,
) -> None:
    """Nothing in webhookd enqueues ahead of the scanner; if something ever did, the scan
    must skip that row rather than fail for ever."""
    wh = await hook(store)
    await store.ingest(events(("e1", "t"), ("e2", "t")))

    def sneak(con: object, payloads: list[None]) -> list[None]:
        con.execute(  # type: ignore[attr-defined]
            "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
            "retry_base, next_attempt_at, body, created_at, updated_at) "
            "SELECT ?, 'e2', 'pending', 0, 0, now(), body, now(), now() "
            "FROM pipeline_events WHERE event_id = 'e2'",
            [wh],
        )
        return [None for _ in payloads]

    await store._write(sneak, None)
    result = await store.scan(500)
    assert (result.events, result.enqueued) == (2, 1)
    assert await statuses(store) == {(wh, "e1"): "pending", (wh, "e2"): "pending"}


@duckdb_in_process
async def test_a_rider_waits_for_other_work_and_shares_its_transaction(
    store: DuckDBStore,
) -> None:
    writer = store._writer
    assert writer is not None
    before = writer.transactions
    rider = writer.submit(_noted, "poll", ride=60.0)
    # A rider queued after it, with little time to wait, runs alone when its time is up:
    # by then the writer has taken the first rider from its queue too, and must have
    # left it waiting, without a transaction of its own.
    assert await writer.submit(_other, "brief", ride=0.01) == "brief"
    assert not rider.done()
    assert writer.transactions == before + 1  # the brief rider's, alone
    assert await writer.submit(_other, "work") == "work"
    assert await rider == "poll"
    assert writer.transactions == before + 2  # one commit for the work and the rider


@duckdb_in_process
async def test_a_rider_alone_runs_when_its_time_is_up(store: DuckDBStore) -> None:
    writer = store._writer
    assert writer is not None
    assert await writer.submit(_noted, "poll", ride=0.05) == "poll"


@duckdb_in_process
async def test_a_transaction_takes_one_rider_of_each_kind(store: DuckDBStore) -> None:
    """Two claims wait; a transaction takes one, so the next transaction has the other."""
    writer = store._writer
    assert writer is not None
    first = writer.submit(_noted, "claim 1", ride=60.0)
    second = writer.submit(_noted, "claim 2", ride=60.0)
    scan = writer.submit(_other, "scan", ride=60.0)
    await writer.submit(_other, "ingest 1")
    assert first.done() and scan.done()
    assert not second.done()
    await writer.submit(_other, "ingest 2")
    assert await second == "claim 2"


@duckdb_in_process
async def test_a_rider_whose_time_is_up_boards_the_next_transaction_under_constant_work(
    store: DuckDBStore,
) -> None:
    """A claim that rides only with new events, under a backlog (outcomes keep the writer
    busy, no event comes in): once its ride is over it must board the next transaction,
    not wait for a moment when the writer's queue is empty, which constant work never
    leaves (claims waited hundreds of ms so, and the workers starved)."""
    writer = store._writer
    assert writer is not None
    loop = asyncio.get_running_loop()
    chain = [loop.create_future() for _ in range(2_000)]
    done = 0
    stop = threading.Event()

    def busy(con: object, payloads: list[int]) -> list[int]:
        # Each transaction queues the next piece of work before it commits: the writer
        # never finds its queue empty until the chain ends.
        nonlocal done
        done += len(payloads)
        if done < len(chain) and not stop.is_set():
            writer._queue.put(_Op(busy, done, chain[done], 1))
        return payloads

    rider = writer.submit(_noted, "claim", ride=0.01, rides_with=frozenset({_other}))
    writer._queue.put(_Op(busy, 0, chain[0], 1))
    assert await rider == "claim"
    assert done < len(chain), "the rider ran only once the writer's queue was empty"
    stop.set()
    assert await writer.submit(_other, "after the chain") == "after the chain"


@duckdb_in_process
async def test_a_scan_rolled_back_leaves_the_remembered_cursor_where_it_was(
    store: DuckDBStore,
) -> None:
    """The main writer remembers the scan cursor it advanced; a transaction that rolls
    back after a scan must make it forget, or the next scan would start past events it
    never enqueued."""
    wh = await hook(store)
    await store.ingest(events(("e1", "t")))

    def scan_then_fail(con: object, payloads: list[None]) -> list[None]:
        batches.scan(con, [(500, None, False)])
        raise RuntimeError("after the scan")

    with pytest.raises(RuntimeError, match="after the scan"):
        await store._write(scan_then_fail, None)
    result = await store.scan(500)
    assert (result.events, result.enqueued) == (1, 1)
    assert await statuses(store) == {(wh, "e1"): "pending"}
