"""No lock over all claims (issue 22): claims of different webhooks run at once, claims of
one webhook one at a time. Another daemon in the middle of a claim of webhook B is stood
for by a connection holding B's claim lock (claim_hooks in queries.sql)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.pg_stores import Make, poll, scan_all
from tests.test_postgres_engine import DEADLINE, events, hook


async def hold_claim_lock(con: Any, webhook_id: str) -> None:
    await con.execute("BEGIN")
    await con.fetchval(
        "SELECT pg_advisory_xact_lock(hashtextextended("
        "'webhookd/' || current_schema() || '/claim/' || $1, 0))",
        webhook_id,
    )


async def test_a_claim_of_one_webhook_does_not_wait_for_anothers(stores: Make, con: Any) -> None:
    store = await stores()
    a = await hook(store)
    b = await hook(store)
    await store.ingest(events("e1", "e2"))
    await scan_all(store)
    await hold_claim_lock(con, b)
    try:
        claims = await asyncio.wait_for(store.claim(10, 5, 30.0), DEADLINE)
        assert {(c.webhook_id, c.event_id) for c in claims} == {(a, "e1"), (a, "e2")}
    finally:
        await con.execute("COMMIT")
    claims = await asyncio.wait_for(store.claim(10, 5, 30.0), DEADLINE)
    assert {(c.webhook_id, c.event_id) for c in claims} == {(b, "e1"), (b, "e2")}


async def test_a_claim_waits_for_the_only_webhook_with_work(stores: Make, con: Any) -> None:
    """Every webhook with room is being claimed by another daemon: the claim waits for
    that claim to end, then takes what it left."""
    store = await stores()
    b = await hook(store)
    await store.ingest(events("e1"))
    await scan_all(store)
    await hold_claim_lock(con, b)
    claiming = asyncio.create_task(store.claim(10, 5, 30.0))

    async def waiting() -> bool:
        n = await con.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        )
        return bool(n)

    try:
        await poll(waiting, DEADLINE, "the claim to wait for the other claim of the webhook")
        assert not claiming.done()
    finally:
        await con.execute("COMMIT")
    (claim,) = await asyncio.wait_for(claiming, DEADLINE)
    assert (claim.webhook_id, claim.event_id) == (b, "e1")
