"""What other sessions on the application's database cannot do to the daemons (issue 22): a
producer's open transaction holding an event id, a DBA's ALTER TABLE left open, a frozen
peer, a clock that is off, an old transaction left open anywhere in the cluster."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Api, DaemonProcess, write_config
from tests.pg import PgCluster
from tests.pg_stores import Make, poll, scan_all
from tests.receivers import HandlerReceiver
from tests.test_postgres_engine import DEADLINE, Q, connect, events, hook
from webhookd.states import Status
from webhookd.store.base import Outcome, StoreUnavailable
from webhookd.store.postgres import PostgresStore
from webhookd.store.postgres import store as pg_store_module
from webhookd.store.postgres.errors import LockTimeout
from webhookd.store.records import utcnow


async def lock_waits(con: Any) -> int:
    """Backends of the daemons waiting on a lock now."""
    n: int = await con.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'webhookd' AND wait_event_type = 'Lock'"
    )
    return n


async def test_an_id_held_by_a_producers_transaction_stalls_only_its_own_ingest(
    stores: Make, con: Any, pg: PgCluster, pg_schema: str
) -> None:
    """A producer publishes X and keeps its transaction open: an ingest of X waits on its
    row lock and gets StoreUnavailable (503) after the lock timeout, and an ingest of other
    ids meanwhile commits without waiting for the producer."""
    store = await stores(lock_timeout=1.0)
    producer = await connect(pg, pg_schema)
    try:
        await producer.execute("BEGIN")
        await producer.fetchval("SELECT publish('X', 't', '{\"n\": 0}')")
        held = asyncio.create_task(store.ingest(events("X")))

        async def waiting() -> bool:
            return await lock_waits(con) > 0

        await poll(waiting, DEADLINE, "the ingest of X to wait on the producer's row lock")
        result = await asyncio.wait_for(store.ingest(events("Y", "Z")), DEADLINE)
        assert result.inserted == 2
        assert await producer.fetchval("SELECT count(*) FROM pipeline_events") == 3  # still open
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(held, DEADLINE)
        assert store.available()  # the database answers: it is not taken for down
    finally:
        await producer.execute("ROLLBACK")
        await producer.close()
    # The producer gave up: X can be ingested now.
    assert (await store.ingest(events("X"))).inserted == 1


@pytest.mark.parametrize("ids", [("X",), ("X", "Y")], ids=["one event", "two events"])
async def test_a_first_try_gives_up_on_a_held_id_after_the_short_wait(
    stores: Make, pg: PgCluster, pg_schema: str, ids: tuple[str, ...]
) -> None:
    """The first try of a request (grouped, or alone in the flush) waits GROUP_LOCK_WAIT on
    another transaction's row lock, not the store's lock timeout: one event goes in a
    statement of its own (queries.sql, ingest_one), which sets that wait itself."""
    store = await stores(lock_timeout=600.0)  # a wait this long would outlast the deadline
    producer = await connect(pg, pg_schema)
    try:
        await producer.execute("BEGIN")
        await producer.fetchval("SELECT publish('X', 't', '{\"n\": 0}')")
        with pytest.raises(LockTimeout):
            await asyncio.wait_for(store._insert_events(events(*ids), True), DEADLINE)
    finally:
        await producer.execute("ROLLBACK")
        await producer.close()
    assert await store._insert_events(events(*ids), True) == set(ids)


async def test_a_dba_holding_a_table_lock_hangs_no_call(stores: Make, con: Any) -> None:
    """ALTER TABLE in a transaction left open holds an ACCESS EXCLUSIVE lock: the daemon's
    statements give up after the lock timeout (StoreUnavailable, the loops try again)
    instead of hanging every connection of the pool; once the DBA commits, all is well."""
    store = await stores(lock_timeout=0.5)
    webhook = await hook(store)
    await store.ingest(events("e1"))
    assert await scan_all(store) == 1
    dba = con
    await dba.execute("BEGIN")
    await dba.execute(f"ALTER TABLE {Q} ADD COLUMN dba_note text")
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.claim(10, 5, 30.0), DEADLINE)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.status(), DEADLINE)
        assert store.available()
    finally:
        await dba.execute("COMMIT")
    (claim,) = await asyncio.wait_for(store.claim(10, 5, 30.0), DEADLINE)
    assert (claim.webhook_id, claim.event_id) == (webhook, "e1")


class GatedReceiver(HandlerReceiver):
    """Holds every request until `gate` is set, then answers 204; counts the answers."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.answered: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        await self.gate.wait()
        self.answered[request.headers["webhook-id"]] += 1
        return web.Response(status=204)


async def test_a_frozen_leader_loses_upkeep_within_peer_timeout(
    tmp_path: Path, pg: PgCluster, pg_schema: str, con: Any, daemon_process: list[DaemonProcess]
) -> None:
    """The leading daemon holds inflight rows and is SIGSTOPped: its heartbeat goes stale,
    another daemon takes upkeep over within peer_timeout, re-drives the frozen daemon's
    rows (their leases are far off) and delivers them."""
    config = write_config(
        tmp_path,
        database={"url": pg.url, "schema": pg_schema, "peer_timeout": "2s"},
        delivery={"lease": "600s", "timeout": "300s", "workers": 8},
    )
    a = DaemonProcess(config, tmp_path / "a.log")
    b = DaemonProcess(config, tmp_path / "b.log")
    daemon_process.extend([a, b])
    async with GatedReceiver() as rx:
        a.start()

        async def a_leads() -> bool:
            return any(line.get("event") == "this daemon leads upkeep" for line in a.lines())

        await poll(a_leads, DEADLINE, "the first daemon to lead upkeep")
        async with Api(a.url) as api:
            await api.create_webhook(rx.url + "/h")
            ids = await api.emit([{"type": "t", "data": {"n": i}} for i in range(3)])
        assert a.proc is not None
        a_id = await con.fetchval("SELECT daemon_id FROM daemons WHERE pid = $1", a.proc.pid)

        async def held_by_a() -> bool:
            n = await con.fetchval(
                f"SELECT count(*) FROM {Q} WHERE status = 'inflight' AND claimed_by = $1", a_id
            )
            return bool(n == len(ids))

        await poll(held_by_a, DEADLINE, "the first daemon to hold every row inflight")
        b.start()
        a.signal(signal.SIGSTOP)
        try:
            rx.gate.set()

            async def delivered() -> bool:
                n = await con.fetchval(f"SELECT count(*) FROM {Q} WHERE status = 'delivered'")
                return bool(n == len(ids))

            await poll(delivered, DEADLINE, "the other daemon to re-drive the frozen one's rows")
            assert set(rx.answered) == set(ids)
        finally:
            a.signal(signal.SIGCONT)


@pytest.fixture
def clock_ahead(monkeypatch: pytest.MonkeyPatch) -> timedelta:
    """This process's daemons read a clock 15 minutes ahead of the database's."""
    ahead = timedelta(minutes=15)
    monkeypatch.setattr(pg_store_module, "local_now", lambda: utcnow() + ahead)
    return ahead


async def skew_measured(store: PostgresStore, ahead: timedelta) -> None:
    async def measured() -> bool:
        return store.skew < -ahead + timedelta(minutes=1)

    await poll(measured, DEADLINE, "a heartbeat to measure the daemon's clock")


async def test_a_daemon_ahead_of_the_database_rescues_no_healthy_lease(
    stores: Make, con: Any, clock_ahead: timedelta
) -> None:
    """The leader's clock is 15 minutes ahead: the leases of another daemon's attempts (a
    minute long) are compared with the database's clock, and none is re-driven."""
    a = await stores()
    leader = await stores(heartbeat_interval=0.05)
    await skew_measured(leader, clock_ahead)
    webhook = await hook(a)
    await a.ingest(events("e1", "e2", "e3"))
    await scan_all(a)
    assert len(await a.claim(3, 5, 60.0)) == 3
    assert await leader.rescue_expired(utcnow() + clock_ahead) == 0
    held = await con.fetch(f"SELECT claimed_by FROM {Q} WHERE webhook_id = $1", webhook)
    assert [r[0] for r in held] == [a.daemon_id] * 3


async def test_a_skewed_daemon_writes_its_next_attempts_in_the_databases_time(
    stores: Make, con: Any, clock_ahead: timedelta
) -> None:
    """A retry 5 s from now, decided by a daemon whose clock is 15 minutes ahead, is due 5 s
    from now by the database's clock, and its log says when it was attempted by that clock."""
    store = await stores(heartbeat_interval=0.05)
    await skew_measured(store, clock_ahead)
    await hook(store)
    await store.ingest(events("e1"))
    await scan_all(store)
    (claim,) = await store.claim(1, 5, 60.0)
    attempted = utcnow() + clock_ahead
    await store.record(
        Outcome(
            webhook_id=claim.webhook_id,
            event_id=claim.event_id,
            attempt=claim.attempt,
            status=Status.PENDING,
            next_attempt_at=attempted + timedelta(seconds=5),
            attempted_at=attempted,
            duration_ms=1.0,
            status_code=500,
            error="failed (500)",
            response_excerpt="",
            outcome="retry",
            deactivate_webhook=False,
            claimed_until=claim.claimed_until,
            spent=True,
        )
    )
    due, now = await con.fetchrow(
        f"SELECT next_attempt_at, now() AT TIME ZONE 'UTC' FROM {Q} WHERE event_id = 'e1'"
    )
    assert now < due < now + timedelta(minutes=1)
    logged = await con.fetchval("SELECT attempted_at FROM webhook_deliveries")
    assert abs(logged - now) < timedelta(minutes=1)


async def test_a_late_outcome_records_what_happened_and_decides_nothing(
    stores: Make, con: Any
) -> None:
    """A daemon froze past its lease; its row was re-driven and delivered by another. Its
    late timeout is logged as late, and neither undoes the delivery nor marks the webhook
    silent (one attempt at a time on every daemon)."""
    a, b = await stores(), await stores()
    webhook = await hook(a)
    await a.ingest(events("e1"))
    await scan_all(a)
    (late,) = await a.claim(1, 5, 0.2)

    async def rescued() -> bool:
        return await b.rescue_expired(utcnow()) == 1

    await poll(rescued, DEADLINE, "the lease to run out and the row to be re-driven")
    (fresh,) = await b.claim(1, 5, 30.0)
    now = utcnow()
    delivered = Outcome(
        webhook_id=webhook, event_id="e1", attempt=fresh.attempt, status=Status.DELIVERED,
        next_attempt_at=None, attempted_at=now, duration_ms=1.0, status_code=204, error=None,
        response_excerpt="", outcome="delivered", deactivate_webhook=False,
        claimed_until=fresh.claimed_until, spent=True,
    )  # fmt: skip
    await b.record(delivered)
    timed_out = Outcome(
        webhook_id=webhook, event_id="e1", attempt=late.attempt, status=Status.PENDING,
        next_attempt_at=now + timedelta(seconds=5), attempted_at=now, duration_ms=50_000.0,
        status_code=None, error="timeout", response_excerpt="", outcome="retry",
        deactivate_webhook=False, claimed_until=late.claimed_until, spent=True,
    )  # fmt: skip
    await a.record(timed_out)

    assert await con.fetchval(f"SELECT status FROM {Q} WHERE event_id = 'e1'") == "delivered"
    assert await con.fetchval("SELECT silent FROM webhooks") is False
    log = await con.fetch("SELECT outcome, error FROM webhook_deliveries ORDER BY attempt_id")
    assert [r["outcome"] for r in log] == ["delivered", "retry"]
    assert log[1]["error"].startswith("late, not applied") and "timeout" in log[1]["error"]


async def test_daemons_with_disagreeing_settings_say_so(stores: Make) -> None:
    """Two daemons on one queue with another max_attempts and another admin token: each
    finds the other's settings at its heartbeat and lists the difference in its status
    (and logs it, peers.py); a daemon with the same settings is not listed."""
    same = {"admin.token": "0a1b2c3d", "delivery.max_attempts": 8}
    a = await stores(shared_settings=same, heartbeat_interval=0.05)
    b = await stores(
        shared_settings={"admin.token": "ffffffff", "delivery.max_attempts": 3},
        heartbeat_interval=0.05,
    )
    c = await stores(shared_settings=same, heartbeat_interval=0.05)

    async def found() -> bool:
        reports = [await s.status() for s in (a, b, c)]
        return [r.settings_disagree for r in reports] == [
            {b.daemon_id: ["admin.token", "delivery.max_attempts"]},
            {
                a.daemon_id: ["admin.token", "delivery.max_attempts"],
                c.daemon_id: ["admin.token", "delivery.max_attempts"],
            },
            {b.daemon_id: ["admin.token", "delivery.max_attempts"]},
        ]

    await poll(found, DEADLINE, "every daemon to see the other's settings")
