"""Several daemons on one PostgreSQL queue, across process boundaries: kill -9 of any
daemon and a crash of PostgreSQL itself lose nothing; while the database is down the
API says so (503) instead of accepting what it cannot commit."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
from aiohttp import web

from tests.conftest import TOKEN, Api, DaemonProcess, write_config
from tests.pg import PgCluster
from tests.receivers import HandlerReceiver


class FlakyReceiver(HandlerReceiver):
    """Answers 500 to a share of requests at random, 204 otherwise; records each success."""

    def __init__(self, failure_rate: float) -> None:
        self.failure_rate = failure_rate
        self.delivered: Counter[tuple[str, str]] = Counter()
        self.failed = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if random.random() < self.failure_rate:
            self.failed += 1
            return web.Response(status=500)
        self.delivered[(request.path, request.headers["webhook-id"])] += 1
        return web.Response(status=204)


async def wait_for(predicate: Callable[[], bool], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def daemons(
    tmp_path: Path, started: list[DaemonProcess], n: int, url: str, schema: str, **overrides: Any
) -> list[DaemonProcess]:
    database = {"url": url, "schema": schema, **overrides.pop("database", {})}
    config = write_config(tmp_path, database=database, **overrides)
    procs = [DaemonProcess(config, tmp_path / f"daemon{i}.log") for i in range(n)]
    started.extend(procs)
    for proc in procs:
        proc.start()
    return procs


async def post_until_accepted(
    session: aiohttp.ClientSession, procs: list[DaemonProcess], events: list[dict[str, Any]]
) -> list[str]:
    """Like a producer: any daemon will do; retry (the same ids) until one commits them."""
    while True:
        proc = random.choice(procs)
        try:
            async with session.post(
                proc.url + "/v1/events",
                json=events,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as resp:
                if resp.status == 202:
                    ids: list[str] = (await resp.json())["ids"]
                    return ids
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)


async def queue_counts(url: str, schema: str) -> dict[str, int]:
    con = await asyncpg.connect(url)
    try:
        rows = await con.fetch(
            f'SELECT status, count(*) AS n FROM "{schema}".webhook_delivery_queue GROUP BY 1'
        )
        return {r["status"]: r["n"] for r in rows}
    finally:
        await con.close()


async def test_three_daemons_survive_kill_9_and_a_database_crash(
    tmp_path: Path,
    pg: PgCluster,
    pg_schema: str,
    daemon_process: list[DaemonProcess],
) -> None:
    n_events, n_hooks, batch, kills = 2000, 4, 50, 10
    procs = daemons(
        tmp_path,
        daemon_process,
        3,
        pg.url,
        pg_schema,
        database={"peer_timeout": "3s"},
        delivery={
            "workers": 16,
            "retry_schedule": ["100ms", "500ms"],
            "max_attempts": 100,
            "timeout": "5s",
            "lease": "20s",
        },
    )
    accepted: list[str] = []
    async with FlakyReceiver(failure_rate=0.2) as rx:
        async with Api(procs[0].url) as api:
            for h in range(n_hooks):
                await api.create_webhook(f"{rx.url}/h{h}")

        async def produce() -> None:
            async with aiohttp.ClientSession() as session:
                for b in range(0, n_events, batch):
                    events = [
                        {"id": f"evt-{i}", "type": "t", "data": {"i": i}}
                        for i in range(b, b + batch)
                    ]
                    accepted.extend(await post_until_accepted(session, procs, events))
                    await asyncio.sleep(0.05)

        producer = asyncio.create_task(produce())
        for k in range(kills):
            delivered = sum(rx.delivered.values())
            await wait_for(
                lambda d=delivered: sum(rx.delivered.values()) >= d + 100 or producer.done(),
                120,
                "deliveries to flow",
            )
            victim = random.choice(procs)
            victim.signal(signal.SIGKILL)
            victim.wait()
            if k == kills // 2:
                await asyncio.to_thread(pg.restart, "immediate")
            await asyncio.to_thread(victim.start, deadline=60)
        await asyncio.wait_for(producer, 180)
        expected = {(f"/h{h}", e) for h in range(n_hooks) for e in accepted}
        await wait_for(lambda: expected <= set(rx.delivered), 240, "every pair to arrive")
        end = time.monotonic() + 60
        while (counts := await queue_counts(pg.url, pg_schema)) != {"delivered": len(expected)}:
            assert time.monotonic() < end, counts
            await asyncio.sleep(0.2)
        for proc in procs:
            assert proc.stop() == 0, proc.output()[-2000:]

    lost = expected - set(rx.delivered)
    duplicates = sum(rx.delivered.values()) - len(rx.delivered)
    print(
        f"\nchaos figures (3 daemons, PostgreSQL): kills={kills} database_crashes=1 "
        f"events={len(set(accepted))} pairs={len(expected)} lost={len(lost)} "
        f"duplicates={duplicates} failed_attempts={rx.failed}"
    )
    assert set(accepted) == {f"evt-{i}" for i in range(n_events)}
    assert not lost


async def test_while_the_database_is_down_ingest_and_readyz_answer_503(
    tmp_path: Path,
    pg: PgCluster,
    pg_schema: str,
    daemon_process: list[DaemonProcess],
) -> None:
    (proc,) = daemons(tmp_path, daemon_process, 1, pg.url, pg_schema)
    async with FlakyReceiver(failure_rate=0.0) as rx:
        async with Api(proc.url) as api:
            await api.create_webhook(f"{rx.url}/h")
            await api.emit({"id": "before", "type": "t", "data": {}})
            await wait_for(lambda: ("/h", "before") in rx.delivered, 30, "the first delivery")
            await asyncio.to_thread(pg.stop, "immediate")
            try:
                end = time.monotonic() + 30
                while True:
                    status, body = await api.request(
                        "POST", "/v1/events", {"id": "during", "type": "t", "data": {}}
                    )
                    if status == 503:
                        break
                    assert time.monotonic() < end, (status, body)
                    await asyncio.sleep(0.1)
                assert body["error"]["code"] == "unavailable"
                assert "database" in body["error"]["message"]
                ready_status, ready = await api.request("GET", "/readyz")
                assert ready_status == 503, ready
                assert ready["checks"]["database"] is False
            finally:
                await asyncio.to_thread(pg.start)
            end = time.monotonic() + 60
            while (
                await api.request("POST", "/v1/events", {"id": "after", "type": "t", "data": {}})
            )[0] != 202:
                assert time.monotonic() < end
                await asyncio.sleep(0.2)
            await wait_for(lambda: ("/h", "after") in rx.delivered, 60, "delivery after restart")
            ready_status, _ = await api.request("GET", "/readyz")
            assert ready_status == 200
        assert proc.stop() == 0
    assert ("/h", "during") not in rx.delivered  # refused, never half-accepted
