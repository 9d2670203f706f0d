"""Which wake-ups cost a claim (WorkerPool): on PostgreSQL every claim is a transaction, and
one that finds nothing costs as much as one that finds work. A delivery whose row the scan
claimed costs no claim after it when no other row of its webhook is due (its outcome's
commit says so: Store.record); when one is, the slot it frees wakes one claimer
(tests/test_postgres_engine.py: 30 rows through a cap of 2 with no poll). At 50 single
events/s that was 6 empty claims a delivery, then one (bench/low_rate.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.pg_stores import Make, poll
from tests.pools import pool_for
from tests.receivers import Recorder
from tests.test_scan_feed import sender  # noqa: F401 (the fixture)
from tests.test_store import events, statuses
from webhookd.sender import Sender
from webhookd.signing import new_secret

DEADLINE = 30.0


async def test_a_delivery_costs_no_claim_after_it_when_no_row_of_its_webhook_is_due(
    stores: Make,
    sender: Sender,  # noqa: F811 (the fixture imported above)
) -> None:
    store = await stores()
    claims = 0
    real_claim = store.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return await real_claim(*args, **kwargs)

    store.claim = counted  # type: ignore[method-assign]
    async with Recorder(status=204) as receiver:
        await store.create_webhook(receiver.url_for("/h"), [], new_secret(), "")
        # No poll within the test: only wake-ups make claims.
        pool = pool_for(store, sender, poll_interval=3600.0, notifier=store)
        running = asyncio.create_task(pool.run())
        try:
            # Both claimers ask at start (and once more for the LISTEN connection's first
            # wake-up), find nothing and sleep.
            await poll(lambda: _true(claims >= 2), DEADLINE, "the claimers' first claims")
            while True:
                before = claims
                await asyncio.sleep(0.3)
                if claims == before:
                    break
            await store.ingest(events(("e1", "t")))
            offered = pool.offer()
            assert offered is not None
            result = await store.scan(500, offered)
            assert len(result.claims) == 1 and not result.left_due
            await pool.take(result)
            await receiver.wait_for_requests(1, deadline=DEADLINE)
            await poll(lambda: _settled(store), DEADLINE, "the outcome to commit")
            # Nothing wakes a claimer: no claim follows within a while.
            await asyncio.sleep(0.5)
            assert claims == before
        finally:
            await pool.shutdown(1.0)
            await running


async def _true(value: bool) -> bool:
    return value


async def _settled(store: Any) -> bool:
    return set((await statuses(store)).values()) == {"delivered"}
