"""A backlog of events larger than one scan batch is scanned batch after batch, without
waiting a poll interval between batches (DuckDB's database process: a scan with nothing
due rides the writer for up to the poll interval, waiting for an ingest's kick)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from webhookd.events import NewEvent
from webhookd.store.duckdb.remote import RemoteStore

BATCH = 10
# Far longer than the test's deadline: a scan that waits for a poll never returns in time.
POLL = 3600.0
DEADLINE = 60.0


def events(count: int) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        NewEvent(f"evt_{i:04d}", "t", f'{{"i":{i}}}', now, f'{{"data":{{"i":{i}}}}}'.encode())
        for i in range(count)
    ]


async def test_a_backlog_of_several_batches_is_scanned_without_waiting_for_polls(
    tmp_path: Path,
) -> None:
    store = RemoteStore(tmp_path / "webhookd.duckdb", poll_interval=POLL)
    await store.open()
    try:
        total = 3 * BATCH + 1
        await store.ingest(events(total))
        scanned = []

        async def scan_to_the_end() -> None:
            while sum(scanned) < total:
                scanned.append((await store.scan(BATCH)).events)

        # Four scans, each of the backlog a full batch left: none waits for a poll.
        await asyncio.wait_for(scan_to_the_end(), DEADLINE)
        assert scanned == [BATCH, BATCH, BATCH, 1]
    finally:
        await store.close()
