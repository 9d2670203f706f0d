"""PostgreSQL claims under contention that the test forces, not hopes for.

- A row locked by another transaction is skipped at once (FOR UPDATE ... SKIP LOCKED) and
  taken once that transaction ends.
- Claims from several daemons that overlap (each one's statement starts before the
  others commit) never hand out a row twice and never put more rows of a webhook inflight
  than its cap, unless one daemon alone holds them (claimed ahead for a fast receiver;
  it attempts no more than the cap at once). Whatever serialises claims (one lock for
  all, or one per webhook), this is what it must keep.

The overlap is made by a gate: a trigger, added to the test's own schema, that holds
each transaction's first UPDATE of the queue until the test lets it through, in the
order the claims were started.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from tests.pg import PgCluster
from webhookd.events import NewEvent, parse_event
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import Claim, Outcome, WebhookLimits
from webhookd.store.postgres import PostgresStore
from webhookd.store.records import utcnow

Q = "webhook_delivery_queue"
DEADLINE = 30.0  # bounds a wait only a broken store runs into: fail, not hang
GATE_KEY = 0x6761  # the first half of the gate's advisory lock keys: (GATE_KEY, ticket)

Make = Callable[..., Awaitable[PostgresStore]]


def events(*ids: str) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        parse_event({"id": e, "type": "t", "data": {"n": i}}, i, now) for i, e in enumerate(ids)
    ]


async def hook(store: PostgresStore, **limits: Any) -> str:
    created = await store.create_webhook(
        "http://127.0.0.1:9/h", [], new_secret(), "", WebhookLimits(**limits)
    )
    webhook_id = created.webhook_id
    return webhook_id


def outcome(claim: Claim, status: Status) -> Outcome:
    now = utcnow()
    return Outcome(
        webhook_id=claim.webhook_id,
        event_id=claim.event_id,
        attempt=claim.attempt,
        status=status,
        next_attempt_at=now if status is Status.PENDING else None,
        attempted_at=now,
        duration_ms=1.0,
        status_code=204 if status is Status.DELIVERED else 500,
        error=None if status is Status.DELIVERED else "HTTP 500",
        response_excerpt="",
        outcome=str(status),
        claimed_until=claim.claimed_until,
    )


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < end, f"never: {what}"
        await asyncio.sleep(0.005)


async def waiting_for_locks(db: Any) -> int:
    """The daemons' connections that wait for a lock now (an advisory lock or a row's)."""
    n: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'webhookd' AND wait_event_type = 'Lock'"
    )
    return n


# -- a row locked elsewhere ---------------------------------------------------------------


async def test_a_claim_skips_a_row_locked_elsewhere_at_once_and_takes_it_later(
    stores: Make, con: Any, pg: PgCluster, pg_schema: str
) -> None:
    store = await stores(pool_size=4)
    webhook = await hook(store)
    await store.ingest(events("locked", "free"))
    await store.scan(10)
    other = await asyncpg.connect(pg.url, server_settings={"search_path": pg_schema})
    try:
        holder = other.transaction()
        await holder.start()
        await other.execute(f"SELECT 1 FROM {Q} WHERE event_id = 'locked' FOR UPDATE")
        claiming = asyncio.ensure_future(store.claim(10, 8, 30.0))
        # Done, or stuck behind the row's lock: whichever comes first, no clock involved.
        await until(
            lambda: _done_or_waiting(claiming, con), "the claim neither returned nor waited"
        )
        waited = not claiming.done()
        await holder.rollback()
        claims = await asyncio.wait_for(claiming, DEADLINE)
        assert not waited, "the claim waited for a row another transaction had locked"
        assert [(c.webhook_id, c.event_id) for c in claims] == [(webhook, "free")]
    finally:
        await other.close()
    (later,) = await store.claim(10, 8, 30.0)
    assert (later.webhook_id, later.event_id) == (webhook, "locked")


async def _done_or_waiting(task: asyncio.Future[Any], db: Any) -> bool:
    return task.done() or await waiting_for_locks(db) > 0


# -- overlapping claims ---------------------------------------------------------------------

GATE = f"""
CREATE SEQUENCE claim_gate_tickets;
CREATE FUNCTION claim_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A transaction's first UPDATE of the queue waits here for the test's word.
    IF current_setting('claim_gate.passed', true) IS DISTINCT FROM 'yes' THEN
        PERFORM set_config('claim_gate.passed', 'yes', true);
        PERFORM pg_advisory_xact_lock_shared({GATE_KEY}, nextval('claim_gate_tickets')::int);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER claim_gate BEFORE UPDATE ON {Q}
    FOR EACH STATEMENT EXECUTE FUNCTION claim_gate();
"""


class Gate:
    """Claims started one by one, each held at the gate (or behind whatever lock the
    store serialises claims with) before the next starts; then let through one at a
    time, each committed before the next goes on: a claim that did not wait for the
    ones before it decides on a snapshot that has not seen them."""

    def __init__(self, gate: Any, db: Any) -> None:
        self._gate = gate  # holds the tickets' locks
        self._db = db

    async def _all_held(self, tasks: list[asyncio.Task[list[Claim]]]) -> bool:
        return await waiting_for_locks(self._db) == sum(not t.done() for t in tasks)

    async def _nobody_at(self, ticket: int) -> bool:
        n: int = await self._db.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = $1 AND objid = $2",
            GATE_KEY,
            ticket,
        )
        return n == 0

    async def run(
        self, claims: list[Callable[[], Coroutine[Any, Any, list[Claim]]]]
    ) -> list[list[Claim]]:
        await self._gate.execute("SELECT setval('claim_gate_tickets', 1, false)")
        for ticket in range(1, len(claims) + 1):
            await self._gate.execute("SELECT pg_advisory_lock($1, $2)", GATE_KEY, ticket)
        tasks: list[asyncio.Task[list[Claim]]] = []
        for claim in claims:
            tasks.append(asyncio.create_task(claim()))
            await until(lambda: self._all_held(tasks), "a claim neither returned nor waited")
        for ticket in range(1, len(claims) + 1):
            await self._gate.execute("SELECT pg_advisory_unlock($1, $2)", GATE_KEY, ticket)
            await until(lambda t=ticket: self._nobody_at(t), f"claim {ticket} through the gate")
            await until(lambda: self._all_held(tasks), "a claim let through never finished")
        return [await asyncio.wait_for(t, DEADLINE) for t in tasks]


async def test_overlapping_claims_of_several_daemons_keep_every_cap(
    stores: Make, con: Any, pg: PgCluster, pg_schema: str
) -> None:
    a, b, c = await stores(pool_size=4), await stores(pool_size=4), await stores(pool_size=4)
    w1, w2 = await hook(a), await hook(a)
    w3 = await hook(a, max_in_flight=3)
    caps = {w1: 2, w2: 2, w3: 3}
    ids = [f"e{i}" for i in range(40)]
    await a.ingest(events(*ids))
    while (await a.scan(500)).events:
        pass
    await con.execute(GATE)
    gate_con = await asyncpg.connect(pg.url, server_settings={"search_path": pg_schema})
    gate = Gate(gate_con, con)
    rng = random.Random(21)
    held: dict[tuple[str, str], tuple[PostgresStore, Claim]] = {}
    try:
        for turn in range(8):
            # Small windows first, then wider ones, some asking to claim ahead (as a pool
            # does for a fast receiver): a claim that misses the ones before it takes rows
            # beyond theirs.
            rounds = [
                (a, lambda: a.claim(2, 2, 30.0, {w1: 8})),
                (b, lambda: b.claim(6, 2, 30.0, {w1: 8, w2: 8})),
                (c, lambda: c.claim(12, 2, 30.0)),
                (a, lambda: a.claim(12, 2, 30.0, {w2: 8, w3: 9})),
            ]
            got = await gate.run([claim for _, claim in rounds])
            for (store, _), claims in zip(rounds, got, strict=True):
                for claim in claims:
                    key = (claim.webhook_id, claim.event_id)
                    assert key not in held, f"turn {turn}: {key} claimed twice"
                    held[key] = (store, claim)
            inflight = await con.fetch(
                f"SELECT webhook_id, count(*) AS n, count(DISTINCT claimed_by) AS daemons "
                f"FROM {Q} WHERE status = 'inflight' GROUP BY webhook_id"
            )
            for row in inflight:
                cap = caps[row["webhook_id"]]
                assert row["n"] <= cap or row["daemons"] == 1, (
                    f"turn {turn}: {row['n']} rows of a webhook with cap {cap} inflight "
                    f"over {row['daemons']} daemons"
                )
            assert sum(r["n"] for r in inflight) == len(held)
            # Some attempts end (delivered, or failed and due again at once); the rest
            # stay held into the next turn.
            for key in rng.sample(sorted(held), k=len(held) // 2):
                store, claim = held.pop(key)
                status = rng.choice([Status.DELIVERED, Status.PENDING])
                await store.record(outcome(claim, status))
    finally:
        await gate_con.close()
