"""A scan that claims on PostgreSQL (issue 26's happy path; scans.py, claims.take): it
waits for no lock (its transaction holds the scan lock and fifo locks), leaves what it
cannot take to the claimers of every daemon and wakes them then, and only then; it runs
beside other daemons' claims and outcomes without a deadlock; and in a daemon an event
reaches its receiver with no claim transaction of its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from tests.conftest import Api, make_settings, running
from tests.pg import PgCluster
from tests.pg_stores import Make, poll
from tests.receivers import HandlerReceiver
from tests.test_postgres_claim_locks import hold_claim_lock
from tests.test_postgres_engine import DEADLINE, events, hook, outcome
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import ClaimRequest, Ordering, WebhookLimits
from webhookd.store.postgres import PostgresStore
from webhookd.store.postgres.store import REPOLL

ASK = ClaimRequest(10, 8, 30.0, {})


class Wakes:
    """The deliveries channel of a schema, as another daemon's listener hears it."""

    def __init__(self, con: Any, channel: str) -> None:
        self.con = con
        self.channel = channel
        self.heard: asyncio.Queue[str] = asyncio.Queue()

    def _heard(self, con: Any, pid: int, channel: str, payload: str) -> None:
        self.heard.put_nowait(payload)

    async def since_last(self, store: PostgresStore | None = None) -> int:
        """Wake-ups sent since the last call: a marker sent now arrives after every
        notification of the transactions committed before it (PostgreSQL delivers them in
        commit order), so whatever comes before the marker is all there was. With `store`,
        once its last scan has committed: a scan that claims a few events answers before
        its COMMIT (PostgresStore.scan), which sends its NOTIFY."""
        if store is not None:
            await store._scan_committed()
        marker = f"marker-{id(self)}-{self.heard.qsize()}"
        await self.con.execute("SELECT pg_notify($1, $2)", self.channel, marker)
        n = 0
        while await asyncio.wait_for(self.heard.get(), DEADLINE) != marker:
            n += 1
        return n


@pytest.fixture
async def wakes(pg: PgCluster, pg_schema: str) -> AsyncIterator[Wakes]:
    con = await asyncpg.connect(pg.url, server_settings={"search_path": pg_schema})
    listener = Wakes(con, f"{pg_schema}.deliveries")
    await con.add_listener(listener.channel, listener._heard)
    yield listener
    await con.close()


async def test_a_scan_that_claims_all_it_enqueued_wakes_no_claimer(
    stores: Make, wakes: Wakes
) -> None:
    store = await stores()
    await hook(store)
    await store.ingest(events("e1", "e2"))
    result = await store.scan(100, ASK)
    assert len(result.claims) == 2 and not result.left_due
    assert await wakes.since_last(store) == 0
    # Without a claim request the scan wakes them, as it always did.
    await store.ingest(events("e3"))
    assert (await store.scan(100)).enqueued == 1
    assert await wakes.since_last(store) == 1


async def test_a_scan_that_reaches_its_limit_wakes_the_claimers(stores: Make, wakes: Wakes) -> None:
    store = await stores()
    await hook(store)
    await store.ingest(events("e1", "e2", "e3"))
    result = await store.scan(100, ClaimRequest(2, 8, 30.0, {}))
    assert len(result.claims) == 2 and result.left_due
    assert await wakes.since_last(store) == 1
    assert len(await store.claim(10, 8, 30.0)) == 1


async def test_a_scan_waits_for_no_claim_lock_and_leaves_that_webhook_to_the_claimers(
    stores: Make, con: Any, wakes: Wakes
) -> None:
    """Another daemon is claiming webhook B: the scan claims A's rows, leaves B's pending
    without waiting, and wakes the claimers for them."""
    store = await stores()
    a, b = await hook(store), await hook(store)
    await store.ingest(events("e1", "e2"))
    await hold_claim_lock(con, b)
    try:
        result = await asyncio.wait_for(store.scan(100, ASK), DEADLINE)
    finally:
        await con.execute("COMMIT")
    assert {(c.webhook_id, c.event_id) for c in result.claims} == {(a, "e1"), (a, "e2")}
    assert result.left_due
    assert await wakes.since_last(store) == 1
    claims = await store.claim(10, 8, 30.0)
    assert {(c.webhook_id, c.event_id) for c in claims} == {(b, "e1"), (b, "e2")}


async def test_a_scan_does_not_wait_even_when_its_only_webhook_is_being_claimed(
    stores: Make, con: Any, wakes: Wakes
) -> None:
    """A plain claim would wait for that claim to end (claim_wait); a scan's holds the scan
    lock and must not."""
    store = await stores()
    b = await hook(store)
    await store.ingest(events("e1"))
    await hold_claim_lock(con, b)
    try:
        result = await asyncio.wait_for(store.scan(100, ASK), DEADLINE)
    finally:
        await con.execute("COMMIT")
    assert (result.enqueued, result.claims, result.left_due) == (1, [], True)
    assert await wakes.since_last(store) == 1
    (claim,) = await store.claim(10, 8, 30.0)
    assert (claim.webhook_id, claim.event_id) == (b, "e1")


async def test_a_scan_leaves_rate_limited_webhooks_to_the_claimers(
    stores: Make, wakes: Wakes
) -> None:
    """Their buckets are rows of `webhooks`, which an outcome's transaction may hold while
    it waits for a fifo lock the scan holds: the scan does not take them."""
    store = await stores()
    plain = await hook(store)
    limited = (
        await store.create_webhook(
            "http://127.0.0.1:9/h", [], new_secret(), "", WebhookLimits(rate_limit=100.0)
        )
    ).webhook_id
    await store.ingest(events("e1"))
    result = await store.scan(100, ASK)
    assert [(c.webhook_id, c.event_id) for c in result.claims] == [(plain, "e1")]
    assert result.left_due
    assert await wakes.since_last(store) == 1
    (claim,) = await store.claim(10, 8, 30.0)
    assert (claim.webhook_id, claim.event_id) == (limited, "e1")


async def test_the_store_counts_rows_claimed_by_scans_and_by_claims(stores: Make) -> None:
    store = await stores()
    await hook(store)
    await store.ingest(events("e1", "e2", "e3"))
    await store.scan(100, ClaimRequest(2, 8, 30.0, {}))
    await store.claim(10, 8, 30.0)
    stats = store.stats()
    assert (stats["claimed_by_scans"], stats["claimed"], stats["claim_transactions"]) == (2, 1, 1)


async def test_scans_that_claim_run_beside_claims_and_outcomes_of_other_daemons(
    stores: Make, con: Any
) -> None:
    """One daemon scans with claims while it and another claim and record outcomes, on
    plain, fifo, capped and rate-limited webhooks: no deadlock, no lock wait left to a
    timeout, and every delivery attempted exactly once."""
    a, b = await stores(), await stores()
    limits = [
        None,
        None,
        WebhookLimits(ordering=Ordering.FIFO),
        WebhookLimits(max_in_flight=1),
        WebhookLimits(rate_limit=1000.0),
    ]
    hooks = [
        (await a.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "", lim)).webhook_id
        for lim in limits
    ]
    n_events = 120
    expected = n_events * len(hooks)
    errors: list[BaseException] = []
    stop = asyncio.Event()

    async def deliver(store: PostgresStore, claims: list[Any]) -> None:
        await asyncio.gather(*(store.record(outcome(c, Status.DELIVERED)) for c in claims))

    async def produce() -> None:
        ids = iter(f"e{i:04d}" for i in range(n_events))
        while chunk := list(itertools.islice(ids, 6)):
            await a.ingest(events(*chunk))
            await asyncio.sleep(0)

    async def scanning() -> None:
        while not stop.is_set():
            try:
                result = await a.scan(7, ClaimRequest(12, 3, 30.0, {}))
                await deliver(a, result.claims)
            except Exception as exc:
                errors.append(exc)
                return
            await asyncio.sleep(0)

    async def claiming(store: PostgresStore) -> None:
        while not stop.is_set():
            try:
                await deliver(store, await store.claim(12, 3, 30.0))
            except Exception as exc:
                errors.append(exc)
                return
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(t) for t in (produce(), scanning(), claiming(a), claiming(b))]

    async def all_delivered() -> bool:
        if errors:
            return True
        n = await con.fetchval(
            "SELECT count(*) FROM webhook_delivery_queue WHERE status = 'delivered'"
        )
        return bool(n == expected)

    try:
        await poll(all_delivered, 4 * DEADLINE, "every delivery to be delivered")
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert errors == []
    attempts = await con.fetch(
        "SELECT webhook_id, event_id, count(*) AS n FROM webhook_deliveries "
        "GROUP BY webhook_id, event_id"
    )
    assert len(attempts) == expected
    assert {r["n"] for r in attempts} == {1}
    assert a.stats()["claimed_by_scans"] > 0


class HeldReceiver(HandlerReceiver):
    """Holds each request's answer until `answer` is set: the attempt stays in flight."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.answer = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.set()
        await self.answer.wait()
        return web.Response(status=204)


async def test_an_event_reaches_its_receiver_with_no_claim_transaction(
    tmp_path: Path, pg: PgCluster, pg_schema: str
) -> None:
    """A daemon on PostgreSQL: the scan that enqueues the event claims it, and the worker
    posts it; no claim transaction takes it (the store's counters, read while the
    receiver holds the attempt open)."""
    settings = make_settings(
        tmp_path,
        database={"url": pg.url, "schema": pg_schema},
        # The claimers poll seldom: what wakes them is work (or a freed slot).
        scanner={"poll_interval": "30s"},
    )
    async with HeldReceiver() as rx, running(settings) as daemon, Api(daemon.url) as api:
        try:
            await api.create_webhook(rx.url + "/h")
            before = (await api.status())["writer"]
            await api.emit([{"type": "t", "data": {"n": 1}}])
            await asyncio.wait_for(rx.arrived.wait(), DEADLINE)
            during = (await api.status())["writer"]
        finally:
            rx.answer.set()
    assert during["claimed_by_scans"] - before["claimed_by_scans"] == 1
    assert during["claimed"] - before["claimed"] == 0


class CountingReceiver(HandlerReceiver):
    def __init__(self) -> None:
        self.arrived: asyncio.Queue[None] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived.put_nowait(None)
        return web.Response(status=204)


async def test_an_event_posted_to_the_api_costs_one_scan_and_no_claim(
    tmp_path: Path, pg: PgCluster, pg_schema: str
) -> None:
    """The API's ingest does not wake the scanner itself on PostgreSQL: a scan woken
    before the commit read a snapshot without the event and scanned again when its
    notification came (1.9 scans an event at 100 events/s). The notification, which
    comes once the event is committed, wakes the one scan that reads it. And the outcome,
    with no other row of its webhook due, wakes no claimer (one empty claim per delivery
    before)."""
    settings = make_settings(
        tmp_path,
        database={"url": pg.url, "schema": pg_schema},
        scanner={"poll_interval": "30s"},  # what scans is the events, not the poll
    )
    async with CountingReceiver() as rx, running(settings) as daemon, Api(daemon.url) as api:
        await api.create_webhook(rx.url + "/h")
        await api.emit([{"type": "t", "data": {"n": 0}}])
        await asyncio.wait_for(rx.arrived.get(), DEADLINE)
        await api.wait_status({"delivered": 1}, deadline=DEADLINE)
        first = (await api.status())["writer"]
        for n in range(1, 6):
            before = (await api.status())["writer"]
            await api.emit([{"type": "t", "data": {"n": n}}])
            await asyncio.wait_for(rx.arrived.get(), DEADLINE)
            await api.wait_status({"delivered": n + 1}, deadline=DEADLINE)
            after = (await api.status())["writer"]
            assert after["claimed_by_scans"] - before["claimed_by_scans"] == 1
            assert after["scans"] - before["scans"] == 1
        # A claim woken by the last outcome may land after this reading; not the others.
        assert after["claim_transactions"] - first["claim_transactions"] == 0


async def test_a_scan_asked_while_the_daemons_scan_runs_makes_it_look_again_at_once(
    stores: Make,
) -> None:
    """A notification that meets this daemon's scan under way finds no scan to run (the
    daemon's scan holds the scan lock); that scan's snapshot may predate the event, so it
    looks again as soon as it ends, not at the look-again timer's next turn (which steady
    notifications keep at MAX_REPOLL) nor at the next event's notification."""
    store = await stores()
    await hook(store)
    listener = store._listener
    assert listener is not None
    woken = listener.events["events"]
    store._repoll = 3600.0  # the timer must not be what wakes the scanner here
    held = HeldScan(store)
    running = asyncio.create_task(store.scan(500))
    await asyncio.wait_for(held.scanned.wait(), DEADLINE)  # read before e1 is committed
    held.undo()
    await store.ingest(events("e1"))
    await asyncio.wait_for(woken.wait(), DEADLINE)  # the event's notification
    woken.clear()
    missed = await store.scan(500)  # the scanner, woken by it
    assert (missed.events, missed.enqueued) == (0, 0)
    held.release.set()
    first = await asyncio.wait_for(running, DEADLINE)
    assert first.events == 0
    await asyncio.wait_for(woken.wait(), DEADLINE)  # looked again: woken at once
    again = await store.scan(500)
    assert (again.events, again.enqueued) == (1, 1)


async def test_a_scan_that_saw_every_announced_event_does_not_look_again(
    stores: Make,
) -> None:
    """Only an announcement a scan may not have seen makes it look again: every look-again
    wakes the daemon's scanners, and one that asked for another each time kept them
    scanning back to back (43 transactions a delivery at 50 events/s, seen)."""
    store = await stores()
    await hook(store)
    listener = store._listener
    assert listener is not None
    await store.ingest(events("e1"))
    xid = await xid_of(store, "e1")
    await poll(announced(listener, xid), DEADLINE, "e1's notification")
    result = await store.scan(500)
    assert (result.events, result.enqueued) == (1, 1)
    assert listener.unseen == []
    assert listener._pokes.get("events") is None


async def test_an_event_announced_during_the_scan_that_saw_it_asks_for_no_other_scan(
    stores: Make,
) -> None:
    """The API's own ingest wakes its scanner at once, so the event's notification
    arrives while the scan that reads it runs, or after it: neither is a reason to scan
    again (it cost one empty scan per event), and a notification of what the last scan
    saw wakes no scanner."""
    store = await stores()
    await hook(store)
    listener = store._listener
    assert listener is not None
    woken = listener.events["events"]
    await store.ingest(events("e1"))
    xid = await xid_of(store, "e1")
    await poll(announced(listener, xid), DEADLINE, "e1's notification")
    listener.unseen.clear()  # as if it had not arrived yet
    channel = f"{store.schema}.events"
    held = HeldScan(store)
    running = asyncio.create_task(store.scan(500))
    await asyncio.wait_for(held.scanned.wait(), DEADLINE)  # read after e1 was committed
    listener._notified(None, 0, channel, str(xid))  # arrives now, during the scan
    assert await announced(listener, xid)()
    held.release.set()
    result = await asyncio.wait_for(running, DEADLINE)
    assert (result.events, result.enqueued) == (1, 1)
    assert listener.unseen == []
    assert listener._pokes.get("events") is None
    # Arriving after the scan ended, it wakes nobody.
    woken.clear()
    listener._notified(None, 0, channel, str(xid))
    assert not woken.is_set() and listener.unseen == []
    # A notification that names no transaction (a schema before 012) always wakes.
    listener._notified(None, 0, channel, "")
    assert woken.is_set() and listener.unseen != []


async def test_a_scan_that_finds_the_lock_held_looks_again_later_for_what_it_did_not_see(
    stores: Make,
) -> None:
    """Another daemon's scan holds the lock and should read the event; should it fail,
    this daemon looks again after REPOLL, not at once (which would spin on the lock)."""
    store = await stores()
    await hook(store)
    listener = store._listener
    assert listener is not None
    other = await asyncpg.connect(store._url, server_settings={"search_path": store.schema})
    try:
        async with other.transaction():  # another daemon's scan, under way
            assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", store._scan_key)
            await store.ingest(events("e1"))
            xid = await xid_of(store, "e1")
            await poll(announced(listener, xid), DEADLINE, "e1's notification")
            loop = asyncio.get_running_loop()
            missed = await store.scan(500)
            assert (missed.events, missed.enqueued) == (0, 0)
            pending = listener._pokes.get("events")
            assert pending is not None and pending.when() - loop.time() > REPOLL / 2
    finally:
        await other.close()
    again = await store.scan(500)
    assert (again.events, again.enqueued) == (1, 1)
    assert listener.unseen == []


class HeldScan:
    """The store's scans, from now until undo(), read and commit, then wait for `release`
    before they return: a scan under way, at the moment the test chooses."""

    def __init__(self, store: PostgresStore) -> None:
        self.scanned = asyncio.Event()
        self.release = asyncio.Event()
        self._store = store
        self._scan = store._scan
        store._scan = self._held  # type: ignore[method-assign]

    async def _held(self, *args: Any) -> Any:
        result = await self._scan(*args)
        self.scanned.set()
        await self.release.wait()
        return result

    def undo(self) -> None:
        self._store._scan = self._scan  # type: ignore[method-assign]


async def xid_of(store: PostgresStore, event_id: str) -> int:
    con = await asyncpg.connect(store._url, server_settings={"search_path": store.schema})
    try:
        xid = await con.fetchval("SELECT xid FROM pipeline_events WHERE event_id = $1", event_id)
        return int(str(xid))
    finally:
        await con.close()


def announced(listener: Any, xid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return any(x == xid for _, x in listener.unseen)

    return check
