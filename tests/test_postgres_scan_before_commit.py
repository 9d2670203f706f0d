"""On PostgreSQL a scan that claims hands its claims to the caller before its COMMIT
(PostgresStore.scan), so that their attempts start while the server syncs it; their
outcomes wait for that COMMIT (another connection does not see the rows before), and a
COMMIT that fails leaves the events to the next scan (a duplicate attempt, never a lost
one). The COMMIT is held open by a deferred constraint trigger that waits for an advisory
lock this test holds: a real server, no timing."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.pg_stores import Make, poll
from tests.test_postgres_engine import DEADLINE, events, hook, outcome
from webhookd.states import Status
from webhookd.store.base import ClaimRequest
from webhookd.store.postgres import PostgresStore, scans

ASK = ClaimRequest(10, 8, 30.0, {}, early=True)
LOCK = 726_001  # the advisory lock the trigger waits for at COMMIT


async def hold_commits(con: Any, *, fail: bool = False, only: str = "") -> None:
    """From now on every transaction that inserts a queue row (of event `only`, if given)
    waits at COMMIT until `con` lets go of LOCK (`fail`: and then fails)."""
    await con.execute(f"SELECT pg_advisory_lock({LOCK})")
    action = "RAISE EXCEPTION 'this commit fails'" if fail else "RETURN NULL"
    await con.execute(
        f"""
        CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF '{only}' = '' OR NEW.event_id = '{only}' THEN
                PERFORM pg_advisory_xact_lock({LOCK});
            END IF;
            {action};
        END $$;
        CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON webhook_delivery_queue
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();
        """
    )


async def one_webhook(stores: Make, *event_ids: str) -> PostgresStore:
    """A store with one webhook for every type, and these events ingested."""
    store = await stores()
    await hook(store)
    await store.ingest(events(*event_ids))
    return store


async def release(con: Any) -> None:
    await con.execute(f"SELECT pg_advisory_unlock({LOCK})")


async def rows(con: Any) -> list[tuple[str, str]]:
    found = await con.fetch("SELECT event_id, status FROM webhook_delivery_queue ORDER BY 1")
    return [(r["event_id"], r["status"]) for r in found]


async def test_a_scans_claims_reach_the_caller_before_its_commit(stores: Make, con: Any) -> None:
    store = await one_webhook(stores, "e1", "e2")
    await hold_commits(con)
    try:
        result = await asyncio.wait_for(store.scan(100, ASK), DEADLINE)
        assert sorted(c.event_id for c in result.claims) == ["e1", "e2"]
        assert await rows(con) == []  # the COMMIT waits for the lock
    finally:
        await release(con)
    await poll(
        lambda: _equal(rows(con), [("e1", "inflight"), ("e2", "inflight")]),
        DEADLINE,
        "the scan's commit",
    )


async def test_an_outcome_waits_for_the_commit_of_the_scan_that_claimed_its_row(
    stores: Make, con: Any
) -> None:
    store = await one_webhook(stores, "e1")
    await hold_commits(con)
    try:
        result = await asyncio.wait_for(store.scan(100, ASK), DEADLINE)
        (claim,) = result.claims
        written = store.record(outcome(claim, Status.DELIVERED, code=204))
        # Written now, it would not see the row and would be taken as late: it waits.
        done, _ = await asyncio.wait((written,), timeout=0.3)
        assert not done
    finally:
        await release(con)
    await asyncio.wait_for(written, DEADLINE)
    assert await rows(con) == [("e1", "delivered")]
    logged = await con.fetch("SELECT outcome, error FROM webhook_deliveries")
    assert [(r["outcome"], r["error"]) for r in logged] == [("delivered", None)]


async def test_claims_before_a_commit_that_fails_leave_the_events_to_the_next_scan(
    stores: Make, con: Any
) -> None:
    store = await one_webhook(stores, "e1")
    await hold_commits(con, fail=True)
    try:
        result = await asyncio.wait_for(store.scan(100, ASK), DEADLINE)
        assert [c.event_id for c in result.claims] == ["e1"]
    finally:
        await release(con)
    await con.execute("DROP TRIGGER hold_commit ON webhook_delivery_queue")

    async def claimed_again() -> bool:
        try:
            again = await store.scan(100, ASK)
        except RuntimeError:
            return False  # the failed commit, reported until a scan succeeds
        return [c.event_id for c in again.claims] == ["e1"]

    await poll(claimed_again, DEADLINE, "the event claimed by a later scan")
    await poll(lambda: _equal(rows(con), [("e1", "inflight")]), DEADLINE, "that scan's commit")


async def _equal(got: Any, want: Any) -> bool:
    return bool(await got == want)


async def test_the_next_scan_waits_for_the_commit_and_then_scans(stores: Make, con: Any) -> None:
    """Answered "nothing new" instead, a scanner behind a backlog would wait for its next
    wake-up (bench/README.md: throughput halved)."""
    store = await one_webhook(stores, "e1")
    await hold_commits(con, only="e1")
    try:
        first = await asyncio.wait_for(store.scan(100, ASK), DEADLINE)
        assert [c.event_id for c in first.claims] == ["e1"]
        await store.ingest(events("e2"))
        second = asyncio.ensure_future(store.scan(100, ASK))
        done, _ = await asyncio.wait((second,), timeout=0.3)
        assert not done  # it waits for the first scan's COMMIT
    finally:
        await release(con)
    result = await asyncio.wait_for(second, DEADLINE)
    assert [c.event_id for c in result.claims] == ["e2"]


async def test_a_scan_of_a_backlog_is_answered_after_its_commit(stores: Make, con: Any) -> None:
    many = [f"e{i:02d}" for i in range(scans.EARLY_EVENTS + 1)]
    store = await one_webhook(stores, *many)
    await hold_commits(con)
    try:
        wide = ClaimRequest(100, 100, 30.0, {}, early=True)
        scanning = asyncio.ensure_future(store.scan(100, wide))
        done, _ = await asyncio.wait((scanning,), timeout=0.3)
        assert not done
    finally:
        await release(con)
    result = await asyncio.wait_for(scanning, DEADLINE)
    assert sorted(c.event_id for c in result.claims) == many
