"""DuckDB's ingest writer (issue 11): ingests commit on a thread and cursor of their own,
in seq order, and kick the main writer's waiting scan and claim.

What must hold: a 202 does not wait for the main writer's transaction of claims and
outcomes; the scanner never skips an event whose transaction commits after a later event
was scanned; the events of an ingest are enqueued and claimed right after its commit; a
CHECKPOINT, which DuckDB refuses while another write transaction is open, waits for the
ingest writer's transaction instead of failing; an id already stored still fails alone
and is told from a re-post.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from webhookd.events import NewEvent, parse_event
from webhookd.signing import new_secret
from webhookd.store.base import EventConflict
from webhookd.store.duckdb.batches import ingest
from webhookd.store.duckdb.store import DuckDBStore

# Bounds a wait that only a broken store would run into, so that it fails, not hangs.
DEADLINE = 30.0


def new_events(*ids: str) -> list[NewEvent]:
    now = datetime.now().astimezone()
    return [
        parse_event({"id": i, "type": "t", "data": {"i": i}}, n, now) for n, i in enumerate(ids)
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "i.duckdb")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def hook(store: DuckDBStore) -> str:
    created = await store.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "")
    webhook_id = created.webhook_id
    return webhook_id


def queued(store: DuckDBStore) -> list[str]:
    assert store._con is not None
    cur = store._con.cursor()
    try:
        return [r[0] for r in cur.execute("SELECT event_id FROM webhook_delivery_queue").fetchall()]
    finally:
        cur.close()


class Held:
    """An operation that holds a writer inside its transaction until released."""

    def __init__(self, then: Any = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._then = then

    def __call__(self, con: Any, payloads: Sequence[Any]) -> list[Any]:
        results = self._then(con, payloads) if self._then is not None else list(payloads)
        self.entered.set()
        assert self.release.wait(DEADLINE)
        return list(results)

    async def inside(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, DEADLINE)


async def test_an_ingest_does_not_wait_for_the_main_writer(store: DuckDBStore) -> None:
    """The main writer stuck in a long transaction (claims, outcomes) delays no 202."""
    await hook(store)
    assert store._writer is not None
    busy = Held()
    holding = store._writer.submit(busy, None)
    await busy.inside()
    try:
        result = await asyncio.wait_for(store.ingest(new_events("e1")), 10)
        assert result.inserted == 1
        assert not holding.done()
    finally:
        busy.release.set()
    await holding
    assert (await store.scan(500)).enqueued == 1


async def test_an_ingest_kicks_the_waiting_scan_and_claim(store: DuckDBStore) -> None:
    """A scan and a claim waiting up to a minute for new events run as soon as an ingest
    commits, in one transaction of the main writer: the event is enqueued and claimed."""
    await hook(store)
    assert store._writer is not None
    scan = asyncio.ensure_future(store.scan(500, ride=60.0))
    claim = asyncio.ensure_future(store.claim(10, 8, 30, ride=60.0, with_new_events=True))
    await asyncio.sleep(0.2)  # both wait in the writer now
    assert not scan.done() and not claim.done()
    before = store._writer.transactions
    await store.ingest(new_events("e1"))
    scanned, claimed = await asyncio.wait_for(asyncio.gather(scan, claim), 10)
    assert (scanned.events, scanned.enqueued) == (1, 1)
    assert [c.event_id for c in claimed] == ["e1"]
    assert store._writer.transactions == before + 1


async def test_a_kick_with_nobody_waiting_costs_no_transaction(store: DuckDBStore) -> None:
    assert store._writer is not None
    before = store._writer.transactions
    await store.ingest(new_events("e1"))
    await store._write(lambda con, payloads: list(payloads), None)  # after any kick
    assert store._writer.transactions == before + 1


async def test_a_kick_that_found_no_scan_waiting_boards_the_next_one(
    store: DuckDBStore,
) -> None:
    """Scans on their way back from a transaction when an ingest commits: the next scan
    that waits for new events runs at once, not after its whole ride."""
    await hook(store)
    writer = store._writer
    assert writer is not None
    kicked = threading.Event()
    kick = writer.kick

    def noted(kind: Any) -> None:
        kick(kind)
        kicked.set()

    writer.kick = noted  # type: ignore[method-assign]
    await store.ingest(new_events("e1"))  # kicks; nobody waits
    assert await asyncio.to_thread(kicked.wait, DEADLINE)
    await store._write(lambda con, payloads: list(payloads), None)  # the kick is behind us
    scanned = await asyncio.wait_for(store.scan(500, ride=60.0), 10)
    assert (scanned.events, scanned.enqueued) == (1, 1)
    # that kick is spent: the next scan waits for the next ingest
    scan = asyncio.ensure_future(store.scan(500, ride=60.0))
    await asyncio.sleep(0.3)
    assert not scan.done()
    await store.ingest(new_events("e2"))
    assert (await asyncio.wait_for(scan, 10)).enqueued == 1


async def test_the_scanner_never_skips_an_event_committed_late(store: DuckDBStore) -> None:
    """An ingest takes its seq (e1), then its transaction is held open; a later ingest (e2,
    a higher seq) is asked meanwhile and a scan runs. Committed in seq order, e2 waits for
    e1 and the scan sees neither; had e2 committed first, the scan would move the cursor
    past e1's seq, and e1, committed afterwards, would never be enqueued."""
    await hook(store)
    assert store._ingest_writer is not None
    held = Held(then=ingest)
    first = store._ingest_writer.submit(held, new_events("e1"))
    await held.inside()
    second = asyncio.ensure_future(store.ingest(new_events("e2")))
    try:
        await asyncio.sleep(0.3)
        await store.scan(500)
    finally:
        held.release.set()
    await first
    await second
    await store.scan(500)
    assert sorted(queued(store)) == ["e1", "e2"]


async def test_concurrent_ingests_scans_and_replays_skip_nothing(store: DuckDBStore) -> None:
    """Many small ingests at once, two scanners and replays racing them: every event is
    enqueued exactly once, and no transaction fails on a conflict."""
    await hook(store)
    ids = [f"e{i:04d}" for i in range(600)]
    done = asyncio.Event()
    errors: list[BaseException] = []

    async def producer(chunk: list[str]) -> None:
        for i in range(0, len(chunk), 2):
            await store.ingest(new_events(*chunk[i : i + 2]))
            if random.random() < 0.1:
                await store.replay(chunk[i], None)

    async def scanner() -> None:
        while not done.is_set():
            try:
                await store.scan(50, ride=0.001)
            except Exception as exc:  # pragma: no cover - the failure this test looks for
                errors.append(exc)

    scanners = [asyncio.ensure_future(scanner()) for _ in range(2)]
    try:
        await asyncio.gather(*(producer(ids[i::20]) for i in range(20)))
    finally:
        done.set()
        await asyncio.gather(*scanners)
    while (await store.scan(500)).events:
        pass
    assert errors == []
    rows = queued(store)
    assert len(rows) == len(set(rows)) == len(ids)
    assert set(rows) == set(ids)


async def test_a_checkpoint_waits_for_the_ingest_transaction(store: DuckDBStore) -> None:
    """DuckDB refuses a CHECKPOINT while another write transaction is open: the main
    writer's checkpoint waits for the ingest writer's transaction instead of failing."""
    assert store._ingest_writer is not None and store._con is not None
    held = Held(then=ingest)
    ingesting = store._ingest_writer.submit(held, new_events("e1"))
    await held.inside()
    threading.Timer(0.3, held.release.set).start()
    await store.checkpoint()  # due now
    cur = store._con.cursor()
    try:
        await asyncio.to_thread(store._idle, cur, False)
    finally:
        cur.close()
    assert held.release.is_set()
    await ingesting
    assert store._last_checkpoint > 0


async def test_a_stored_id_fails_alone_in_a_group_of_ingests(store: DuckDBStore) -> None:
    """Ingests that share the ingest writer's transaction with an id already stored are
    committed; the stored id's ingest is told from a re-post by the careful retry."""
    await hook(store)
    await store.ingest(new_events("e1"))
    assert store._ingest_writer is not None
    held = Held()
    holding = store._ingest_writer.submit(held, None)
    await held.inside()
    stored = new_events("e1")[0]
    changed = replace(stored, payload='{"i":"x"}')
    tasks = [
        asyncio.ensure_future(store.ingest(batch))
        for batch in (new_events("e1"), new_events("e2", "e3"), [changed])
    ]
    await asyncio.sleep(0.1)  # all three queued behind the held transaction
    held.release.set()
    await holding
    again, fresh, conflict = await asyncio.gather(*tasks, return_exceptions=True)
    assert again.inserted == 0  # type: ignore[union-attr]
    assert fresh.inserted == 2  # type: ignore[union-attr]
    assert isinstance(conflict, EventConflict) and conflict.event_ids == ["e1"]
    while (await store.scan(500)).events:
        pass
    assert sorted(queued(store)) == ["e1", "e2", "e3"]
