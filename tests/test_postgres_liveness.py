"""What other sessions on the application's database cannot do to the daemons (issue 22): a
producer's open transaction holding an event id, a DBA's ALTER TABLE left open, a frozen
peer, a clock that is off, an old transaction left open anywhere in the cluster."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Api, DaemonProcess, write_config
from tests.pg import PgCluster
from tests.pg_stores import Make, poll, scan_all
from tests.receivers import HandlerReceiver
from tests.test_postgres_engine import DEADLINE, Q, connect, events, hook
from webhookd.store.base import StoreUnavailable


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
