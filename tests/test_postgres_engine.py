"""The PostgreSQL engine's core on a real server (tests/pg.py): migrations, the outbox
scan, ingest conflicts, claims and caps across daemons, fenced outcomes, rescue by
heartbeat, leader election, LISTEN/NOTIFY, and a restart of the server under the store.
Several PostgresStore instances on one schema stand for several daemons."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.pg import PgCluster, drop_schema, fresh_schema
from tests.pools import pool_for
from tests.receivers import Recorder
from webhookd import events as events_module
from webhookd.api.render import webhook_json
from webhookd.events import NewEvent, canonical_json, parse_event
from webhookd.sender import Sender
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import (
    Claim,
    EventConflict,
    Ordering,
    Outcome,
    Owner,
    StoreUnavailable,
    WebhookPatch,
)
from webhookd.store.postgres import PostgresStore
from webhookd.store.postgres.migrate import migrations
from webhookd.store.postgres.statistics import MIN_CHANGES
from webhookd.store.records import utcnow

Q = "webhook_delivery_queue"
DEADLINE = 30.0  # bounds a wait only a broken store runs into: fail, not hang

Make = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
def cluster(pg: PgCluster) -> PgCluster:
    """The session's server (conftest.pg: tests/pg.py's pg_cluster())."""
    return pg


@pytest.fixture
async def schema(cluster: PgCluster) -> AsyncIterator[str]:
    name = fresh_schema()
    yield name
    await drop_schema(cluster.url, name)


@pytest.fixture
async def make(cluster: PgCluster, schema: str) -> AsyncIterator[Make]:
    """Open a store (a daemon) on the test's schema; all are closed at the end."""
    opened: list[PostgresStore] = []

    async def open_store(**kwargs: Any) -> PostgresStore:
        store = PostgresStore(cluster.url, schema=schema, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def db(cluster: PgCluster, schema: str) -> AsyncIterator[Any]:
    """A plain connection on the schema, as a producer or an operator would have."""
    con = await asyncpg.connect(cluster.url, server_settings={"search_path": schema})
    yield con
    await con.close()


async def connect(cluster: PgCluster, schema: str) -> Any:
    return await asyncpg.connect(cluster.url, server_settings={"search_path": schema})


def events(*ids: str, data: Any = None, event_type: str = "t") -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        parse_event({"id": eid, "type": event_type, "data": {"n": i} if data is None else data},
                    i, now)
        for i, eid in enumerate(ids)
    ]  # fmt: skip


async def hook(store: PostgresStore, types: list[str] | None = None) -> str:
    created = await store.create_webhook("http://127.0.0.1:9/h", types or [], new_secret(), "")
    webhook_id = created.webhook_id
    return webhook_id


def outcome(
    claim: Claim,
    status: Status,
    *,
    code: int | None = 200,
    due_in: float = 0.0,
    spent: bool = True,
    gone: bool = False,
) -> Outcome:
    now = utcnow()
    return Outcome(
        webhook_id=claim.webhook_id,
        event_id=claim.event_id,
        attempt=claim.attempt,
        status=status,
        next_attempt_at=now + timedelta(seconds=due_in) if status is Status.PENDING else None,
        attempted_at=now,
        duration_ms=1.0,
        status_code=code,
        error=None if code is not None and code < 300 else f"failed ({code})",
        response_excerpt="",
        outcome=str(status),
        deactivate_webhook=gone,
        claimed_until=claim.claimed_until,
        spent=spent,
    )


async def rows(db: Any, where: str = "true", *args: Any) -> dict[tuple[str, str], Any]:
    found = await db.fetch(
        f"SELECT webhook_id, event_id, status, attempts, lease_until, claimed_by, "
        f"last_error, next_attempt_at FROM {Q} WHERE {where}",
        *args,
    )
    return {(r["webhook_id"], r["event_id"]): r for r in found}


# -- migrations -------------------------------------------------------------------------


async def test_daemons_starting_together_migrate_once(cluster: PgCluster, schema: str) -> None:
    stores = [PostgresStore(cluster.url, schema=schema) for _ in range(5)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        shipped = [version for version, _, _ in migrations()]
        assert sorted((s.migrations_applied for s in stores), key=len) == [[]] * 4 + [shipped]
        con = await connect(cluster, schema)
        try:
            recorded = [r[0] for r in await con.fetch("SELECT version FROM schema_migrations")]
            assert sorted(recorded) == shipped
            assert await con.fetchval("SELECT count(*) FROM daemons") == 5
        finally:
            await con.close()
        again = PostgresStore(cluster.url, schema=schema)
        await again.open()
        assert again.migrations_applied == []
        await again.close()
    finally:
        for s in stores:
            await s.close()


async def test_a_bad_url_or_login_is_named_without_the_password(cluster: PgCluster) -> None:
    closed_port = PostgresStore("postgresql://webhookd:s3cr3t-pw@127.0.0.1:1/postgres")
    with pytest.raises(StoreUnavailable) as refused:
        await closed_port.open()
    assert "database.url" in str(refused.value)
    assert "s3cr3t-pw" not in str(refused.value)
    assert "cannot connect" in str(refused.value)

    host_port = cluster.url.split("@", 1)[1]
    no_such_role = PostgresStore(f"postgresql://nobody_here:s3cr3t-pw@{host_port}")
    with pytest.raises(StoreUnavailable) as denied:
        await no_such_role.open()
    assert "database.url" in str(denied.value)
    assert "s3cr3t-pw" not in str(denied.value)
    assert "authentication failed" in str(denied.value)


async def test_connections_to_the_server_have_tcp_keepalives(make: Make) -> None:
    """A server gone without closing its connections (a partition) fails calls within
    about half a minute instead of the kernel's many minutes."""
    store = await make()
    assert store._pool is not None and store._listener is not None
    async with store._pool.acquire() as con:
        pooled = con._transport.get_extra_info("socket")
    listening = store._listener._con._transport.get_extra_info("socket")
    for sock in (pooled, listening):
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000


# -- the outbox ---------------------------------------------------------------------------


async def test_an_event_committed_late_is_not_skipped(
    make: Make, cluster: PgCluster, schema: str, db: Any
) -> None:
    """A producer's transaction holds event A (the lower seq) while B commits: B is
    enqueued without waiting for A's transaction, and once it commits A is enqueued too,
    not passed by."""
    store = await make()
    webhook = await hook(store)
    producer = await connect(cluster, schema)
    try:
        await producer.execute("BEGIN")
        await producer.fetchval("SELECT publish('A', 'order.paid', '{\"n\": 1, \"a\": [1.5]}')")
        await db.fetchval("SELECT publish('B', 'order.paid', '{\"n\": 2}')")
        seqs = dict(await db.fetch("SELECT event_id, seq FROM pipeline_events"))
        assert set(seqs) == {"B"}  # A is not visible yet

        await store.scan(100)
        assert set(await rows(db)) == {(webhook, "B")}, "B waited for A's open transaction"

        await producer.execute("COMMIT")
    finally:
        await producer.close()
    scanned = await store.scan(100)
    assert scanned.events == 1 and scanned.enqueued == 1
    assert set(await rows(db)) == {(webhook, "A"), (webhook, "B")}
    seqs = dict(await db.fetch("SELECT event_id, seq FROM pipeline_events"))
    assert seqs["A"] < seqs["B"]
    # A producer's event gets the body the API would have built, stored for every attempt.
    occurred = await db.fetchval("SELECT occurred_at FROM pipeline_events WHERE event_id = 'A'")
    expected = events_module.body(
        "A", "order.paid", occurred.replace(tzinfo=UTC), canonical_json({"n": 1, "a": [1.5]})
    )
    assert await db.fetchval("SELECT body FROM pipeline_events WHERE event_id = 'A'") == expected
    assert await db.fetchval(f"SELECT body FROM {Q} WHERE event_id = 'A'") == expected
    assert json.loads(expected)["timestamp"].endswith("Z")
    assert (await store.scan(100)).events == 0


async def test_an_aborted_producer_transaction_leaves_nothing(
    make: Make, cluster: PgCluster, schema: str, db: Any
) -> None:
    store = await make()
    webhook = await hook(store)
    producer = await connect(cluster, schema)
    try:
        await producer.execute("BEGIN")
        await producer.fetchval("SELECT publish('C', 't', '{}')")
        await db.fetchval("SELECT publish('D', 't', '{}')")
        scanned = await store.scan(100)  # D does not wait for C's fate
        assert (scanned.events, scanned.enqueued) == (1, 1)
        await producer.execute("ROLLBACK")
    finally:
        await producer.close()
    assert (await store.scan(100)).events == 0
    assert set(await rows(db)) == {(webhook, "D")}
    assert await db.fetchval("SELECT count(*) FROM pipeline_events WHERE event_id = 'C'") == 0
    # The gap C left does not stop the scanner.
    await db.fetchval("SELECT publish('E', 't', '{}')")
    assert (await store.scan(100)).enqueued == 1


async def test_publish_accepts_the_same_event_again_and_refuses_other_content(
    make: Make, db: Any
) -> None:
    store = await make()
    await db.fetchval("SELECT publish('X', 't', '{\"a\": 1, \"b\": 2}')")
    # The same data (jsonb: key order does not matter): accepted, no duplicate.
    assert await db.fetchval("SELECT publish('X', 't', '{\"b\": 2, \"a\": 1}')") == "X"
    assert await db.fetchval("SELECT count(*) FROM pipeline_events WHERE event_id = 'X'") == 1
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.fetchval("SELECT publish('X', 't', '{\"a\": 2}')")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.fetchval("SELECT publish('X', 'other', '{\"a\": 1, \"b\": 2}')")
    # The API path agrees with the SQL one.
    again = await store.ingest(events("X", data={"b": 2, "a": 1}))
    assert again.inserted == 0
    with pytest.raises(EventConflict):
        await store.ingest(events("X", data={"a": 3}))


# -- ingest ---------------------------------------------------------------------------------


async def test_ingest_conflicts_as_the_api_answers_409(make: Make, db: Any) -> None:
    store = await make()
    assert (await store.ingest(events("e1", "e2"))).inserted == 2
    again = await store.ingest(events("e1"))
    assert (again.ids, again.inserted) == (["e1"], 0)
    with pytest.raises(EventConflict) as conflict:
        await store.ingest([*events("e3"), *events("e1", data={"other": True})])
    assert conflict.value.event_ids == ["e1"]
    stored = {r[0] for r in await db.fetch("SELECT event_id FROM pipeline_events")}
    assert stored == {"e1", "e2"}, "a conflicting batch stores nothing"
    twice = await store.ingest([*events("e4"), *events("e4")])
    assert (twice.ids, twice.inserted) == (["e4", "e4"], 1)
    with pytest.raises(EventConflict) as inside:
        await store.ingest([*events("e5"), *events("e5", data={"n": 9})])
    assert inside.value.event_ids == ["e5"]
    assert await db.fetchval("SELECT count(*) FROM pipeline_events WHERE event_id = 'e5'") == 0


async def test_ingest_sees_a_conflicting_event_committed_while_it_waited(
    make: Make, cluster: PgCluster, schema: str
) -> None:
    """The same id written by another transaction still open: the ingest waits on it, and
    once it commits with other content the ingest is a conflict, not a silent re-post."""
    store = await make()
    other = await connect(cluster, schema)
    try:
        await other.execute("BEGIN")
        await other.fetchval("SELECT publish('race', 't', '{\"n\": 1}')")
        ingest = asyncio.create_task(store.ingest(events("race", data={"n": 2})))
        await asyncio.sleep(0.3)
        assert not ingest.done()  # waiting on the other transaction's row
        await other.execute("COMMIT")
        with pytest.raises(EventConflict):
            await asyncio.wait_for(ingest, DEADLINE)
    finally:
        await other.close()


async def test_concurrent_ingests_share_commits_and_keep_their_own_answers(
    make: Make, db: Any
) -> None:
    """Requests that queue behind a commit share the next one (one NOTIFY, one commit,
    not one each), yet each gets what it would have got alone: its own count of new
    events, and a conflict only for the request whose content differs."""
    store = await make()
    v = {"v": 1}
    assert (await store.ingest(events("old", data=v))).inserted == 1
    before = store.stats()["transactions"]
    singles = [store.ingest(events(f"s{i}", data=v)) for i in range(60)]
    same_again = store.ingest(events("s0", "s1", data=v))  # duplicates of this round's
    clash = store.ingest(events("s2", "own", data={"other": True}))
    stored_clash = store.ingest(events("old", "lost", data={"changed": True}))
    results = await asyncio.gather(*singles, same_again, clash, stored_clash,
                                   return_exceptions=True)  # fmt: skip
    *single_results, again, clashed, stored_clashed = results
    assert [r.inserted for r in single_results] == [1] * 60  # type: ignore[union-attr]
    assert again.inserted == 0  # type: ignore[union-attr]
    assert isinstance(clashed, EventConflict) and clashed.event_ids == ["s2"]
    assert isinstance(stored_clashed, EventConflict) and stored_clashed.event_ids == ["old"]
    commits = store.stats()["transactions"] - before
    assert commits < 30, f"{commits} commits for 63 requests: they were not grouped"
    stored = {r[0] for r in await db.fetch("SELECT event_id FROM pipeline_events")}
    assert stored == {"old", *(f"s{i}" for i in range(60))}, "a refused request stores nothing"


# -- claims across daemons --------------------------------------------------------------------


async def test_two_daemons_never_share_a_row_or_exceed_a_cap(make: Make, db: Any) -> None:
    """Each daemon attempts at most the cap of a webhook at once (its own semaphore, as
    WorkerPool's per-webhook count); rows claimed ahead (webhooks[0] asks for 100, a fast
    receiver's rounds) wait their turn. Attempts running at once, over both daemons, never
    exceed the cap, and a webhook has more rows inflight than its cap only while one
    daemon alone holds them."""
    a, b = await make(), await make()
    per_webhook = 3
    webhooks = [await hook(a) for _ in range(3)]
    n_events = 60
    await a.ingest(events(*(f"ev{i}" for i in range(n_events))))
    assert (await a.scan(1000)).enqueued == n_events * len(webhooks)

    attempting: dict[str, int] = {}
    held_keys: set[tuple[str, str]] = set()
    delivered: list[tuple[str, str]] = []
    problems: list[str] = []
    writes: list[asyncio.Future[None]] = []
    ahead = 0  # claims that held more rows than the cap
    checking = asyncio.Lock()  # one connection (db) for both daemons' checks

    async def attempt(store: PostgresStore, slot: asyncio.Semaphore, c: Claim) -> None:
        async with slot:
            attempting[c.webhook_id] = attempting.get(c.webhook_id, 0) + 1
            if attempting[c.webhook_id] > per_webhook:
                problems.append(f"{c.webhook_id}: {attempting[c.webhook_id]} attempts at once")
            await asyncio.sleep(random.uniform(0, 0.005))
            # Counted free before the outcome commits: the check never over-counts.
            attempting[c.webhook_id] -= 1
            held_keys.discard((c.webhook_id, c.event_id))
            delivered.append((c.webhook_id, c.event_id))
            writes.append(store.record(outcome(c, Status.DELIVERED)))

    async def daemon(store: PostgresStore) -> None:
        nonlocal ahead
        slots = {w: asyncio.Semaphore(per_webhook) for w in webhooks}
        running: set[asyncio.Task[None]] = set()
        deadline = time.monotonic() + DEADLINE
        while len(delivered) < n_events * len(webhooks) and time.monotonic() < deadline:
            claims = await store.claim(8, per_webhook, 30.0, {webhooks[0]: 100})
            for c in claims:
                key = (c.webhook_id, c.event_id)
                if key in held_keys:
                    problems.append(f"{key} handed out twice")
                held_keys.add(key)
                task = asyncio.create_task(attempt(store, slots[c.webhook_id], c))
                running.add(task)
                task.add_done_callback(running.discard)
            async with checking:
                inflight = await db.fetch(
                    f"SELECT webhook_id, count(*) AS n, count(DISTINCT claimed_by) AS daemons "
                    f"FROM {Q} WHERE status = 'inflight' GROUP BY webhook_id"
                )
            for r in inflight:
                if r["n"] > per_webhook:
                    ahead += 1
                    if r["daemons"] > 1:
                        problems.append(f"{r['webhook_id']}: {r['n']} inflight over 2 daemons")
            await asyncio.sleep(0.002 if claims else 0.005)
        await asyncio.gather(*running)

    await asyncio.gather(daemon(a), daemon(b))
    await asyncio.wait_for(asyncio.gather(*writes), DEADLINE)
    assert problems == []
    assert ahead > 0, "no daemon ever claimed ahead of the cap"
    assert sorted(delivered) == sorted(set(delivered))
    assert len(delivered) == n_events * len(webhooks)
    counts = dict(await db.fetch(f"SELECT status, count(*) FROM {Q} GROUP BY status"))
    assert counts == {"delivered": n_events * len(webhooks)}
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == len(delivered)
    claimants = {r[0] for r in await db.fetch("SELECT DISTINCT claimed_by FROM " + Q)}
    assert claimants == {None}


async def test_a_silent_webhook_gets_one_attempt_across_daemons(make: Make, db: Any) -> None:
    a, b = await make(), await make()
    webhook = await hook(a)
    await a.ingest(events(*(f"s{i}" for i in range(10))))
    await a.scan(100)
    (first,) = await a.claim(1, 5, 30.0)
    # No answer at all (a timeout): the webhook falls silent for every daemon.
    await a.record(outcome(first, Status.PENDING, code=None))
    assert await db.fetchval("SELECT silent FROM webhooks WHERE webhook_id = $1", webhook)

    got = await asyncio.gather(*(s.claim(5, 5, 30.0) for s in (a, b, a, b)))
    claimed = [c for batch in got for c in batch]
    assert len(claimed) == 1
    assert await db.fetchval(f"SELECT count(*) FROM {Q} WHERE status = 'inflight'") == 1
    assert await b.claim(5, 5, 30.0) == [] and await a.claim(5, 5, 30.0) == []

    # An answer, even an error, ends the silence: the full cap again.
    owner = a if claimed[0] in got[0] or claimed[0] in got[2] else b
    await owner.record(outcome(claimed[0], Status.PENDING, code=500))
    assert not await db.fetchval("SELECT silent FROM webhooks WHERE webhook_id = $1", webhook)
    assert len(await b.claim(10, 5, 30.0)) == 5


async def test_a_late_outcome_after_rescue_and_reclaim_changes_nothing(make: Make, db: Any) -> None:
    a, b = await make(), await make()
    webhook = await hook(a)
    await a.ingest(events("late"))
    await a.scan(10)
    (old,) = await a.claim(1, 5, 30.0)
    # A's lease runs out (as if A hung); the leader re-drives the row; B claims it.
    assert await b.rescue_expired(utcnow() + timedelta(seconds=31)) == 1
    (new,) = await b.claim(1, 5, 30.0)
    assert new.claimed_until != old.claimed_until
    before = await rows(db)
    hooks_before = await db.fetchrow("SELECT * FROM webhooks")

    await a.record(outcome(old, Status.DEAD, code=500))
    await a.record(outcome(old, Status.PARKED, code=410, gone=False))
    after = await rows(db)
    assert after == before
    row = after[(webhook, "late")]
    assert (row["status"], row["claimed_by"]) == ("inflight", b.daemon_id)
    assert await db.fetchrow("SELECT * FROM webhooks") == hooks_before

    await b.record(outcome(new, Status.DELIVERED))
    assert (await rows(db))[(webhook, "late")]["status"] == "delivered"


async def test_outcomes_park_retries_of_inactive_webhooks_and_410(make: Make, db: Any) -> None:
    store = await make()
    gone, disabled = await hook(store), await hook(store)
    await store.ingest(events("o1", "o2", "o3"))
    await store.scan(10)
    claims = await store.claim(10, 1, 30.0)
    by_hook = {c.webhook_id: c for c in claims}
    await store.update_webhook(disabled, WebhookPatch(active=False))
    await asyncio.gather(
        store.record(outcome(by_hook[gone], Status.PARKED, code=410, gone=True)),
        store.record(outcome(by_hook[disabled], Status.PENDING, code=500)),
    )
    hooks = {
        r[0]: r for r in await db.fetch("SELECT webhook_id, active, disabled_reason FROM webhooks")
    }
    assert not hooks[gone]["active"]
    assert hooks[gone]["disabled_reason"] == "the endpoint answered 410 Gone"
    statuses = {k: r["status"] for k, r in (await rows(db)).items()}
    assert set(statuses.values()) == {"parked"}, statuses
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 2


async def test_an_unspent_outcome_keeps_attempts_and_logs_nothing(make: Make, db: Any) -> None:
    store = await make()
    webhook = await hook(store)
    await store.ingest(events("u1"))
    await store.scan(10)
    (claim,) = await store.claim(1, 5, 30.0)
    fail = outcome(claim, Status.PENDING, code=None, due_in=5, spent=False)
    await store.record(fail)
    row = (await rows(db))[(webhook, "u1")]
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 0, fail.error)
    assert row["lease_until"] is None and row["claimed_by"] is None
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0
    assert not await db.fetchval("SELECT silent FROM webhooks")


async def test_many_outcomes_share_a_few_statements(make: Make, db: Any) -> None:
    store = await make()
    await hook(store)
    await store.ingest(events(*(f"m{i}" for i in range(300))))
    await store.scan(1000)
    claims = await store.claim(300, 300, 30.0)
    assert len(claims) == 300
    before = store.stats()["transactions"]
    await asyncio.gather(*(store.record(outcome(c, Status.DELIVERED)) for c in claims))
    assert store.stats()["transactions"] - before <= 3
    counts = dict(await db.fetch(f"SELECT status, count(*) FROM {Q} GROUP BY status"))
    assert counts == {"delivered": 300}


async def test_workers_claim_again_when_outcomes_commit_not_at_the_next_poll(
    make: Make,
) -> None:
    """A webhook's cap is counted in the database here: the slot an attempt frees opens
    when its outcome commits. With a poll interval of an hour and no notification coming
    (the rows are enqueued before the pool starts), 30 rows through a cap of 2 need 15
    claims, each started by the commit before it; the rows a claim brings start at once,
    not after the claimer's wait for more work."""
    store = await make()
    async with Recorder() as receiver:
        created = webhook_json(
            await store.create_webhook(receiver.url_for("/h"), [], new_secret(), "")
        )
        assert created["webhook_id"]
        await store.ingest(events(*(f"w{i}" for i in range(30))))
        assert (await store.scan(100)).enqueued == 30
        sender = Sender(
            timeout=5, max_response_bytes=0, allow_private=True, pool_size=4, user_agent="t"
        )
        await sender.start()
        pool = pool_for(store, sender, poll_interval=3600.0, notifier=store)
        running = asyncio.create_task(pool.run())
        try:
            await receiver.wait_for_requests(30, deadline=DEADLINE)
        finally:
            await pool.shutdown(1.0)
            await running
            await sender.close()


async def test_an_outcome_says_whether_rows_of_its_webhook_are_due(make: Make) -> None:
    """What the pool wakes a claimer for after an outcome commits (Store.record): rows of
    the webhook still due, or a fifo webhook's next row let through; not a webhook with
    none (one empty claim per delivery at low rates)."""
    store = await make()
    plain = await hook(store)
    await store.ingest(events("e1", "e2"))
    assert (await store.scan(100)).enqueued == 2
    first, second = await store.claim(1, 8, 30.0) + await store.claim(1, 8, 30.0)
    assert not await store.claim(1, 8, 30.0)
    assert await store.record(outcome(first, Status.DELIVERED)) is False
    retry = outcome(second, Status.PENDING, code=503)  # due at once: it waits for a claim
    assert await store.record(retry) is True
    (again,) = await store.claim(1, 8, 30.0)
    assert await store.record(outcome(again, Status.DELIVERED)) is False
    await store.update_webhook(plain, WebhookPatch(ordering=Ordering.FIFO))
    await store.ingest(events("f1", "f2"))
    assert (await store.scan(100)).enqueued == 2
    (head,) = await store.claim(8, 8, 30.0)
    assert head.event_id == "f1"
    assert await store.record(outcome(head, Status.DELIVERED)) is True  # f2 is next
    (last,) = await store.claim(8, 8, 30.0)
    assert last.event_id == "f2"
    assert await store.record(outcome(last, Status.DELIVERED)) is False  # none behind it


# -- rescue, release, leader -----------------------------------------------------------------


async def test_a_dead_daemons_rows_come_back_and_a_live_ones_stay(make: Make, db: Any) -> None:
    a = await make(heartbeat_interval=3600)  # beats once, at open
    b = await make()
    await hook(a)
    await a.ingest(events("r1", "r2", "r3", "r4"))
    await a.scan(10)
    mine = await a.claim(2, 10, 300.0)
    theirs = await b.claim(2, 10, 300.0)
    assert len(mine) == len(theirs) == 2
    assert not isinstance(a, Owner)  # no start-up rescue: the other rows are alive
    assert await b.rescue_expired(utcnow()) == 0  # both alive, leases long

    await db.execute(
        "UPDATE daemons SET heartbeat_at = heartbeat_at - interval '1 hour' WHERE daemon_id = $1",
        a.daemon_id,
    )
    assert await b.rescue_expired(utcnow()) == 2
    now = await rows(db)
    for c in mine:
        assert now[(c.webhook_id, c.event_id)]["status"] == "pending"
    for c in theirs:
        assert now[(c.webhook_id, c.event_id)]["claimed_by"] == b.daemon_id


async def test_pending_rows_of_an_inactive_webhook_are_parked_by_upkeep(
    make: Make, db: Any
) -> None:
    """A row left pending for a webhook that is no longer active (enqueued while it was
    being deactivated) is not in any claim's range when claims read few webhooks' own
    ranges: upkeep parks it, and leaves the rows of active webhooks alone."""
    store = await make()
    live, gone = await hook(store), await hook(store)
    await store.ingest(events("p1", "p2"))
    assert (await store.scan(10)).enqueued == 4
    await db.execute("UPDATE webhooks SET active = false WHERE webhook_id = $1", gone)
    assert [c.webhook_id for c in await store.claim(10, 8, 30.0)] == [live, live]
    assert {r["status"] for r in (await rows(db, "webhook_id = $1", gone)).values()} == {"pending"}
    await store.rescue_expired(utcnow())
    assert {r["status"] for r in (await rows(db, "webhook_id = $1", gone)).values()} == {"parked"}
    assert {r["status"] for r in (await rows(db, "webhook_id = $1", live)).values()} == {"inflight"}


async def test_release_returns_only_this_daemons_rows(make: Make, db: Any) -> None:
    a, b = await make(), await make()
    webhook = await hook(a)
    await a.ingest(events("l1", "l2"))
    await a.scan(10)
    (mine,) = await a.claim(1, 10, 30.0)
    (theirs,) = await b.claim(1, 10, 30.0)
    keys = [(c.webhook_id, c.event_id) for c in (mine, theirs)]
    assert await a.release(keys) == 1
    now = await rows(db)
    assert now[(webhook, mine.event_id)]["status"] == "pending"
    assert now[(webhook, theirs.event_id)]["status"] == "inflight"


async def test_the_leader_analyzes_the_tables_that_grew_since_their_statistics(
    make: Make, db: Any
) -> None:
    """A plan cached while the queue was empty stays until the table is analyzed
    (statistics.py): the leader runs ANALYZE once a table's changes reach its size,
    without waiting for autovacuum, and leaves the tables that did not change alone."""
    store = await make()
    await hook(store)
    n = MIN_CHANGES + 100
    await store.ingest(events(*(f"g{i}" for i in range(n))))
    assert (await store.scan(10 * n)).enqueued == n
    grown = {"webhook_delivery_queue", "pipeline_events"}
    analyzed: set[str] = set()
    deadline = time.monotonic() + DEADLINE
    while not grown <= analyzed and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        analyzed = {
            r[0]
            for r in await db.fetch(
                "SELECT relname FROM pg_stat_user_tables "
                "WHERE schemaname = current_schema() AND last_analyze IS NOT NULL"
            )
        }
    assert grown <= analyzed
    assert "webhook_deliveries" not in analyzed, "a table with no changes was analyzed"


async def test_pooled_connections_go_back_without_a_reset_query(make: Make, db: Any) -> None:
    """asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` after every call: a round trip for session state the engine never leaves
    on a pooled connection (store._keep_session)."""
    store = await make()
    webhook = await hook(store)
    for _ in range(3):
        await store.get_webhook(webhook)
    last = [
        r[0]
        for r in await db.fetch(
            "SELECT query FROM pg_stat_activity "
            "WHERE application_name = 'webhookd' AND state = 'idle' AND pid <> pg_backend_pid()"
        )
    ]
    assert any("webhook_id" in q for q in last), last
    assert not [q for q in last if "pg_advisory_unlock_all" in q]


async def test_one_daemon_leads_and_another_takes_over(make: Make, db: Any) -> None:
    a, b, c = await make(), await make(), await make()
    first = [await s.lead() for s in (a, b, c)]
    assert first.count(True) == 1
    assert [await s.lead() for s in (a, b, c)] == first  # it keeps leading
    leader = (a, b, c)[first.index(True)]
    others = [s for s in (a, b, c) if s is not leader]

    # Its heartbeat stale past peer_timeout (as when it is frozen): leadership goes with it.
    await db.execute(
        "UPDATE daemons SET heartbeat_at = heartbeat_at - interval '1 hour' WHERE daemon_id = $1",
        leader.daemon_id,
    )
    assert not await leader.lead()  # its own heartbeat is stale: it does not lead either
    took = [await s.lead() for s in others]
    assert took.count(True) == 1
    await db.execute(
        "UPDATE daemons SET heartbeat_at = now() AT TIME ZONE 'UTC' WHERE daemon_id = $1",
        leader.daemon_id,
    )
    assert not await leader.lead()  # alive again, and finds the lead taken
    successor = others[took.index(True)]

    # Closed: the next daemon takes over at its next call.
    await successor.close()
    rest = [s for s in (a, b, c) if s is not successor]
    assert [await s.lead() for s in rest].count(True) == 1


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


async def test_another_daemons_work_wakes_a_waiting_one(make: Make) -> None:
    a, b = await make(), await make()
    await hook(b)
    for channel in ("events", "deliveries"):
        await a.wait_for_work(channel, 0)  # clear what opening set
    started = time.monotonic()
    waiting = asyncio.create_task(a.wait_for_work("events", 10))
    await asyncio.sleep(0.05)
    await b.ingest(events("n1"))
    await asyncio.wait_for(waiting, DEADLINE)
    assert time.monotonic() - started < 5

    started = time.monotonic()
    waiting = asyncio.create_task(a.wait_for_work("deliveries", 10))
    await asyncio.sleep(0.05)
    assert (await b.scan(10)).enqueued == 1
    await asyncio.wait_for(waiting, DEADLINE)
    assert time.monotonic() - started < 5

    started = time.monotonic()
    await a.wait_for_work("events", 0.3)  # nothing new: the timeout
    assert time.monotonic() - started >= 0.25


async def test_a_daemons_second_scan_leaves_the_database_alone_while_its_first_runs(
    make: Make,
) -> None:
    """The scanner keeps two scans asked (Scanner.run); on PostgreSQL the second would only
    learn, in a transaction of its own, that the first holds scan_lock."""
    store = await make()
    await hook(store)
    await store.ingest(events("s1", "s2"))
    before = store.stats()["transactions"]
    first, second = await asyncio.gather(store.scan(100), store.scan(100))
    assert (first.events, first.enqueued) == (2, 2)
    assert (second.events, second.enqueued) == (0, 0)
    assert store.stats()["transactions"] - before == 1
    assert (await store.scan(100)).events == 0
    assert store.stats()["transactions"] - before == 2, "a scan alone asks the database"


async def test_an_old_transaction_open_anywhere_holds_back_nothing(
    make: Make, cluster: PgCluster, schema: str, db: Any
) -> None:
    """A transaction left open in another database of the cluster holds the xmin horizon,
    and a producer's transaction holding event `old` stays open: the events committed
    after them are scanned at once, in batches that go on across scans while more events
    come, and `old` is scanned when its transaction commits, neither skipped nor twice."""
    store = await make()
    webhook = await hook(store)
    blocker = await asyncpg.connect(cluster.url.rsplit("/", 1)[0] + "/template1")
    producer = await connect(cluster, schema)
    try:
        await blocker.execute("BEGIN")
        await blocker.fetchval("SELECT pg_current_xact_id()")
        await producer.execute("BEGIN")
        await producer.fetchval("SELECT publish('old', 't', '{}')")
        young = [f"young-{i}" for i in range(60)]
        for i in range(0, 40, 10):
            await store.ingest(events(*young[i : i + 10]))
        scanned = (await store.scan(7)).events
        await store.ingest(events(*young[40:]))  # while a batch is in progress
        while (n := (await store.scan(7)).events) > 0:
            scanned += n
        assert scanned == len(young)
        assert set(await rows(db)) == {(webhook, e) for e in young}

        await producer.execute("COMMIT")
        assert (await store.scan(7)).events == 1
        assert (await store.scan(7)).events == 0
        assert set(await rows(db)) == {(webhook, e) for e in [*young, "old"]}
        assert (await store.status()).scanner_lag_events == 0
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
        await producer.close()


# -- PostgreSQL restarted under the store ------------------------------------------------------


async def until_available(call: Callable[[], Awaitable[Any]]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return await call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_the_store_survives_a_restart_of_postgresql(
    make: Make, cluster: PgCluster, schema: str
) -> None:
    if not cluster.managed:
        pytest.skip("WEBHOOKD_TEST_POSTGRES_URL: the server is not ours to restart")
    store = await make(heartbeat_interval=0.2)
    webhook = await hook(store)
    await store.ingest(events("k1", "k2", "k3"))
    await store.scan(10)
    first, second = await store.claim(2, 10, 60.0)
    await store.record(outcome(first, Status.DELIVERED))
    assert store.available()

    cluster.stop("immediate")  # a crash: what was committed must come back by recovery
    try:
        with pytest.raises(StoreUnavailable) as down:
            await store.ingest(events("k4"))
        assert "unavailable" in str(down.value)
        assert not store.available()
        assert store.healthy()  # down is not stuck: it reconnects
        # An outcome recorded meanwhile is kept, and written once the database is back.
        late = store.record(outcome(second, Status.DELIVERED))
        await asyncio.sleep(0.3)
        assert not late.done()
    finally:
        cluster.start()

    assert (await until_available(lambda: store.ingest(events("k4")))).inserted == 1
    assert store.available()
    await asyncio.wait_for(late, DEADLINE)
    con = await connect(cluster, schema)
    try:
        stored = {r[0] for r in await con.fetch("SELECT event_id FROM pipeline_events")}
        assert stored == {"k1", "k2", "k3", "k4"}
        queue = await rows(con)
        assert queue[(webhook, first.event_id)]["status"] == "delivered"
        assert queue[(webhook, second.event_id)]["status"] == "delivered"
        assert {k[1] for k, r in queue.items() if r["status"] == "pending"} == {"k3"}

        # The LISTEN connection is back: a producer's commit wakes the store again.
        deadline = time.monotonic() + DEADLINE
        while not (store._listener and store._listener.connected):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await store.wait_for_work("events", 0)
        waiting = asyncio.create_task(store.wait_for_work("events", 10))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await con.fetchval("SELECT publish('k5', 't', '{}')")
        await asyncio.wait_for(waiting, DEADLINE)
        assert time.monotonic() - started < 5
    finally:
        await con.close()

    # pg_ctl restart -m immediate, as one step: the same again.
    cluster.restart("immediate")
    scanned = await until_available(lambda: store.scan(10))
    assert scanned.events + (await store.scan(10)).events == 2  # k4, k5
    assert store.available()
