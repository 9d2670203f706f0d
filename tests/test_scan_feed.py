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
    """The rows once every one is in a state of `want` (outcomes commit after the POST)."""
    end = asyncio.get_running_loop().time() + DEADLINE
    while set((now := await statuses(store)).values()) - want:
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
        await pool.take(offered, result)
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
        await pool.take(offered, result)
        assert set((await statuses(store)).values()) == {"pending"}
    assert receiver.requests == []


async def test_an_offer_is_room_asked_until_the_scan_ends(store: Store, sender: Sender) -> None:
    """4 workers, claims of 10: an offer asks what a claimer would; while a scan holds it,
    the next offer (or a claimer) gets only what is left."""
    pool = pool_for(store, sender, poll_interval=3600.0)
    first = pool.offer()
    assert first is not None and first.limit == 10
    second = pool.offer()
    assert second is not None and second.limit == 4
    await pool.take(second, None)  # failed scans give their room back too
    await pool.take(first, None)
    again = pool.offer()
    assert again is not None and again.limit == 10
    await pool.take(again, None)


def woken(pool: WorkerPool) -> bool:
    return pool._wake.is_set()


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
        await pool.take(offered, result)
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
        await pool.take(offered, result)
        assert woken(pool)
        await receiver.wait_for_requests(2, deadline=DEADLINE)
        await pool.shutdown(1.0)
