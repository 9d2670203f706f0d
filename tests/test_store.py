"""The store on a real database: enqueue, claims, outcomes, parking, rescue, pruning.

The tests before the "DuckDB engine only" line use the Store interface alone, so that
they hold for every engine; the ones after it test the DuckDB file, its writer thread
and its riders.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from webhookd.events import parse_event
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import (
    Claim,
    DeliveryFilter,
    EventConflict,
    Outcome,
    Store,
    WebhookPatch,
)
from webhookd.store.duckdb_store import DuckDBStore
from webhookd.store.records import utcnow

# Bounds a wait that only a broken store would run into, so that it fails, not hangs.
DEADLINE = 30.0


# `store` (tests/conftest.py) runs each test on every engine; these run on DuckDB alone.
duckdb_only = pytest.mark.parametrize("store", ["duckdb"], indirect=True)


def events(*specs: tuple[str, str]) -> list:  # type: ignore[type-arg]
    now = datetime.now().astimezone()
    return [
        parse_event({"id": eid, "type": etype, "data": {"n": i}}, i, now)
        for i, (eid, etype) in enumerate(specs)
    ]


async def hook(store: Store, types: list[str] | None = None) -> str:
    created = await store.create_webhook("http://127.0.0.1:9/h", types or [], new_secret(), "")
    webhook_id: str = created["webhook_id"]
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
    hook_row = await store.get_webhook(wid)
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
    assert (await store.get_webhook(failing))["active"] is False
    assert (await store.get_webhook(healthy))["active"] is True
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


# --- DuckDB engine only ------------------------------------------------------------
# The file itself (reopened, edited with duckdb.connect), its migrations, its one writer
# thread with group commit and riders, and the start-up rescue of every inflight row
# (the file lock proves their owner is gone; a shared PostgreSQL database rescues none).


def _noted(con: object, payloads: list[str]) -> list[str]:
    return list(payloads)


def _other(con: object, payloads: list[str]) -> list[str]:
    return list(payloads)


@duckdb_only
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


@duckdb_only
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


@duckdb_only
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
    assert results[1] is None
    assert set((await statuses(store)).values()) == {"delivered"}


@duckdb_only
async def test_rescue_orphans_returns_inflight_rows(store: DuckDBStore) -> None:
    await hook(store)
    await store.ingest(events(("e1", "t")))
    await store.scan(500)
    await store.claim(10, 8, 30)
    assert await store.rescue_orphans() == 1
    assert set((await statuses(store)).values()) == {"pending"}
    assert len(await store.claim(10, 8, 30)) == 1


async def test_migrations_are_applied_once(tmp_path: Path) -> None:
    s = DuckDBStore(tmp_path / "m.duckdb")
    await s.open()
    assert s.migrations_applied == [1, 2]
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
        assert s.migrations_applied == [2]
        assert (await s.get_webhook("wh_old"))["url"] == "http://127.0.0.1:9/"
    finally:
        await s.close()
    con = duckdb.connect(str(path))
    reset = con.execute("SELECT health_reset_at FROM webhooks").fetchone()
    con.close()
    assert reset is not None and reset[0] is not None


@duckdb_only
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


@duckdb_only
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


@duckdb_only
async def test_a_rider_alone_runs_when_its_time_is_up(store: DuckDBStore) -> None:
    writer = store._writer
    assert writer is not None
    assert await writer.submit(_noted, "poll", ride=0.05) == "poll"


@duckdb_only
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
