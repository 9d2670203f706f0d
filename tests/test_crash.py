"""Across process boundaries: SIGKILL mid-delivery loses nothing; SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
from aiohttp import web

from tests.conftest import Api, DaemonProcess, write_config
from tests.receivers import HandlerReceiver


class CountingReceiver(HandlerReceiver):
    """Records (path, webhook-id) of every POST; answers 204 after a little latency."""

    def __init__(self, latency: float = 0.01) -> None:
        self.latency = latency
        self.seen: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None
        self.entered = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.entered += 1
        if self.hold is not None:
            await self.hold.wait()
        elif self.latency:
            await asyncio.sleep(random.uniform(0, self.latency))  # a receiver's own latency
        self.seen.append((request.path, request.headers["webhook-id"]))
        return web.Response(status=204)


def start_daemon(tmp_path: Path, started: list, **overrides: Any) -> DaemonProcess:  # type: ignore[type-arg]
    """A daemon subprocess on tmp_path's database, killed at teardown by the fixture."""
    proc = DaemonProcess(write_config(tmp_path, **overrides), tmp_path / "daemon.log")
    started.append(proc)
    return proc.start()


def query(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the database file the daemon left, after it exited."""
    con = duckdb.connect(str(tmp_path / "webhookd.duckdb"), read_only=True)
    try:
        rows: list[tuple[Any, ...]] = con.execute(sql).fetchall()
        return rows
    finally:
        con.close()


async def query_once_free(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    """`query`, once the killed daemon's database process has let go of the file: it dies
    with the daemon, but its threads take a moment to exit."""
    end = time.monotonic() + 10
    while True:
        try:
            return query(tmp_path, sql)
        except duckdb.IOException as exc:
            if "lock" not in str(exc) or time.monotonic() > end:
                raise
        await asyncio.sleep(0.01)


async def _wait_for(predicate, deadline: float, what: str) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_sigkill_mid_delivery_loses_nothing(tmp_path: Path, daemon_process: list) -> None:  # type: ignore[type-arg]
    """kill -9 while deliveries flow, five times: every accepted event reaches every
    webhook. The lease is an hour, so the lease rescuer re-drives nothing within the
    test: what was in flight at each kill comes back through the start-up rescue alone,
    which must return every such row (counted in the file between kill and restart)."""
    kills, batches, batch_size, n_hooks = 5, 30, 20, 3
    proc = start_daemon(
        tmp_path,
        daemon_process,
        delivery={"workers": 16, "retry_schedule": ["200ms"], "max_attempts": 50, "lease": "1h"},
    )
    accepted: list[str] = []
    async with CountingReceiver(latency=0.02) as rx:
        async with Api(proc.url) as api:
            for i in range(n_hooks):
                await api.create_webhook(f"{rx.url}/h{i}")

        async def produce() -> None:
            async with aiohttp.ClientSession() as session:
                for b in range(batches):
                    events = [
                        {"id": f"evt-{b}-{i}", "type": "t", "data": {"b": b, "i": i}}
                        for i in range(batch_size)
                    ]
                    while True:  # the daemon may be dead right now: retry until accepted
                        try:
                            async with session.post(
                                proc.url + "/v1/events",
                                json=events,
                                headers={"Authorization": f"Bearer {api.token}"},
                            ) as resp:
                                if resp.status == 202:
                                    accepted.extend((await resp.json())["ids"])
                                    break
                        except aiohttp.ClientError:
                            pass
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.02)

        producer = asyncio.create_task(produce())
        rescued: list[tuple[int, int]] = []  # (inflight in the file at the kill, rescued)
        for _ in range(kills):
            before = len(rx.seen)
            # kill while deliveries are flowing
            await _wait_for(lambda b=before: len(rx.seen) >= b + 40, 60, "deliveries to flow")
            proc.signal(signal.SIGKILL)
            proc.wait()
            ((inflight,),) = await query_once_free(
                tmp_path, "SELECT count(*) FROM webhook_delivery_queue WHERE status = 'inflight'"
            )
            proc.start()
            (ready,) = [line for line in proc.lines() if line.get("event") == "webhookd ready"]
            rescued.append((inflight, ready["rescued"]))
            # Every row left in flight was back to pending before the daemon was ready.
            assert ready["rescued"] == inflight, rescued
        assert sum(left for left, _ in rescued) > 0, rescued  # there was something to rescue
        await asyncio.wait_for(producer, 120)
        expected = {(f"/h{h}", e) for h in range(n_hooks) for e in accepted}
        await _wait_for(lambda: expected <= set(rx.seen), 120, "every pair to arrive")
        async with Api(proc.url) as api:
            await api.wait_status({"delivered": len(expected)}, deadline=30)
        assert proc.stop() == 0

    lost = expected - set(rx.seen)
    duplicates = len(rx.seen) - len(set(rx.seen))
    print(
        f"\nkill -9 figures: kills={kills} pairs={len(expected)} lost={len(lost)} "
        f"duplicates={duplicates} rescued at start-up={[back for _, back in rescued]}"
    )
    assert not lost
    # Batches re-posted after a kill (their 202 lost, or never sent) are stored once.
    produced = {f"evt-{b}-{i}" for b in range(batches) for i in range(batch_size)}
    assert sorted(accepted) == sorted(produced)
    stored = query(tmp_path, "SELECT event_id FROM pipeline_events")
    assert sorted(event_id for (event_id,) in stored) == sorted(produced)
    rows = query(tmp_path, "SELECT status, count(*) FROM webhook_delivery_queue GROUP BY ALL")
    assert rows == [("delivered", n_hooks * len(produced))]


async def test_sigterm_drains_in_flight_attempts_and_exits_0(
    tmp_path: Path,
    daemon_process: list,  # type: ignore[type-arg]
) -> None:
    proc = start_daemon(
        tmp_path,
        daemon_process,
        delivery={"workers": 4, "per_webhook_concurrency": 4},
        shutdown={"grace": "10s"},
    )
    async with CountingReceiver() as rx:
        rx.hold = asyncio.Event()
        async with Api(proc.url) as api:
            await api.create_webhook(f"{rx.url}/h")
            await api.emit([{"type": "t", "data": {"i": i}} for i in range(10)])
        await _wait_for(lambda: rx.entered == 4, 15, "four attempts in flight")
        proc.signal(signal.SIGTERM)
        await _wait_for(lambda: "stopping" in proc.output(), 10, "the daemon to start draining")
        rx.hold.set()  # the in-flight attempts finish inside the grace period
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
    rows = dict(query(tmp_path, "SELECT status, count(*) FROM webhook_delivery_queue GROUP BY ALL"))
    logged = query(tmp_path, "SELECT count(*) FROM webhook_deliveries")
    assert rows == {"delivered": 4, "pending": 6}
    assert logged == [(4,)]


async def test_sigterm_after_grace_releases_what_did_not_finish(
    tmp_path: Path,
    daemon_process: list,  # type: ignore[type-arg]
) -> None:
    proc = start_daemon(
        tmp_path,
        daemon_process,
        delivery={"workers": 4, "timeout": "30s", "lease": "1m"},
        shutdown={"grace": "500ms"},
    )
    async with CountingReceiver() as rx:
        rx.hold = asyncio.Event()  # never set: the receiver never answers
        async with Api(proc.url) as api:
            await api.create_webhook(f"{rx.url}/h")
            await api.emit([{"type": "t", "data": {"i": i}} for i in range(3)])
        await _wait_for(lambda: rx.entered == 3, 15, "three attempts in flight")
        proc.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        rx.hold.set()
    assert code == 0
    rows = query(tmp_path, "SELECT status, attempts, lease_until FROM webhook_delivery_queue")
    assert rows and all(r == ("pending", 0, None) for r in rows), rows


async def test_second_signal_exits_at_once_and_the_next_start_rescues(
    tmp_path: Path,
    daemon_process: list,  # type: ignore[type-arg]
) -> None:
    proc = start_daemon(
        tmp_path,
        daemon_process,
        delivery={"workers": 2, "timeout": "30s", "lease": "1m"},
        shutdown={"grace": "30s"},
    )
    async with CountingReceiver() as rx:
        rx.hold = asyncio.Event()
        async with Api(proc.url) as api:
            await api.create_webhook(f"{rx.url}/h")
            (event_id,) = await api.emit({"type": "t", "data": {}})
        await _wait_for(lambda: rx.entered == 1, 15, "an attempt in flight")
        proc.signal(signal.SIGTERM)
        await _wait_for(lambda: "stopping" in proc.output(), 10, "draining")
        proc.signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        assert code != 0
        rx.hold.set()
        proc.start()
        assert any(
            line.get("event") == "webhookd ready" and line.get("rescued") == 1
            for line in proc.lines()
        )
        await _wait_for(lambda: ("/h", event_id) in rx.seen, 15, "the rescued delivery")
        # This daemon's shutdown.grace is 30 s: give the drain more than that to exit.
        proc.signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 90) == 0
