"""The worker pool fed by a scan (WorkerPool.offer and take; the Scanner asks them): a
scan's claims are attempted as a claimer's are, given back once the pool stops, and the
claimers are woken for the rows a scan enqueued only if it may have left some due. On
every engine (the conformance fixture `store`), with a real sender and receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from tests.pools import pool_for
from tests.receivers import Recorder
from tests.test_store import events, statuses
from webhookd.sender import Sender
from webhookd.signing import new_secret
from webhookd.store.base import Store
from webhookd.workers import WorkerPool

DEADLINE = 30.0


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    s = Sender(timeout=5, max_response_bytes=0, allow_private=True, pool_size=4, user_agent="t")
    await s.start()
    yield s
    await s.close()


async def hook_to(store: Store, receiver: Recorder) -> str:
    created = await store.create_webhook(receiver.url_for("/h"), [], new_secret(), "")
    return created.webhook_id


async def settled(store: Store, want: set[str]) -> dict[tuple[str, str], str]:
    """The rows once there are some and every one is in a state of `want` (outcomes
    commit after the POST; on DuckDB a scan's claims of the rows it inserts may even be
    attempted before those rows commit)."""
    end = asyncio.get_running_loop().time() + DEADLINE
    while not (now := await statuses(store)) or set(now.values()) - want:
        assert asyncio.get_running_loop().time() < end, f"rows still {now}"
        await asyncio.sleep(0.02)
    return now


async def test_a_scans_claims_are_attempted_with_no_claimer_running(
    store: Store, sender: Sender
) -> None:
    async with Recorder(status=204) as receiver:
        await hook_to(store, receiver)
        await store.ingest(events(("e1", "t"), ("e2", "t")))
        pool = pool_for(store, sender, poll_interval=3600.0)  # its claimers never run
        offered = pool.offer()
        assert offered is not None
        result = await store.scan(500, offered)
        assert len(result.claims) == 2
        await pool.take(result)
        await receiver.wait_for_requests(2, deadline=DEADLINE)
        assert set((await settled(store, {"delivered"})).values()) == {"delivered"}
        await pool.shutdown(1.0)
    assert sorted(r.headers["webhook-id"] for r in receiver.requests) == ["e1", "e2"]


async def test_a_stopping_pool_gives_a_scans_claims_back(store: Store, sender: Sender) -> None:
    async with Recorder(status=204) as receiver:
        await hook_to(store, receiver)
        await store.ingest(events(("e1", "t")))
        pool = pool_for(store, sender, poll_interval=3600.0)
        offered = pool.offer()
        result = await store.scan(500, offered)
        assert len(result.claims) == 1
        await pool.shutdown(1.0)  # the scan's answer comes back after the pool stopped
        assert pool.offer() is None
        await pool.take(result)
        assert set((await statuses(store)).values()) == {"pending"}
    assert receiver.requests == []


async def test_an_offer_holds_back_no_claimers_room(store: Store, sender: Sender) -> None:
    """4 workers, claims of 10: an offer asks what a claimer would, and a scan waiting for
    new events with it (on DuckDB in the writer, up to a poll interval) leaves the
    claimers theirs: rows due meanwhile are claimed."""
    async with Recorder(status=204) as receiver:
        await hook_to(store, receiver)
        await store.ingest(events(("e1", "t")))
        await store.scan(500)
        pool = pool_for(store, sender, poll_interval=3600.0)
        offered = [pool.offer() for _ in range(2)]
        assert [o.limit for o in offered if o is not None] == [10, 10]
        running = asyncio.create_task(pool.run())
        try:
            await receiver.wait_for_requests(1, deadline=DEADLINE)
        finally:
            await pool.shutdown(1.0)
            await running


def woken(pool: WorkerPool) -> bool:
    return any(wake.is_set() for wake in pool._wakes)


async def test_the_claimers_are_woken_only_for_rows_a_scan_may_have_left_due(
    store: Store, sender: Sender
) -> None:
    async with Recorder(status=204) as receiver:
        await hook_to(store, receiver)
        # All it enqueued claimed: nothing to wake the claimers for.
        pool = pool_for(store, sender, poll_interval=3600.0)
        await store.ingest(events(("e1", "t")))
        offered = pool.offer()
        assert offered is not None
        result = await store.scan(500, offered)
        assert len(result.claims) == 1 and not result.left_due
        await pool.take(result)
        assert not woken(pool)
        await receiver.wait_for_requests(1, deadline=DEADLINE)
        await pool.shutdown(1.0)
        # Its limit reached: the claimers take the rest.
        pool = pool_for(store, sender, poll_interval=3600.0)
        await store.ingest(events(("e2", "t"), ("e3", "t")))
        offered = pool.offer()
        assert offered is not None
        result = await store.scan(500, replace(offered, limit=1))
        assert len(result.claims) == 1 and result.left_due
        await pool.take(result)
        assert woken(pool)
        await receiver.wait_for_requests(2, deadline=DEADLINE)
        await pool.shutdown(1.0)
