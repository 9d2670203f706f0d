"""A WAL past its bound is checkpointed without waiting for the checkpoint interval: until a
CHECKPOINT, DuckDB holds in memory what was written since the last one, so under a steady
stream (a writer never idle) the database process would grow until the interval's end."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from webhookd.events import NewEvent
from webhookd.store.duckdb import store as duckdb_store
from webhookd.store.duckdb.store import DuckDBStore

BOUND = 256 * 1024


def wal_bytes(wal: Path) -> int:
    return wal.stat().st_size if wal.exists() else 0


def events(start: int, count: int) -> list[NewEvent]:
    now = datetime.now(UTC)
    body = b"x" * 1000
    return [NewEvent(f"evt_{i:06d}", "t", "{}", now, body) for i in range(start, start + count)]


async def test_a_wal_past_its_bound_is_checkpointed_before_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(duckdb_store, "WAL_CHECKPOINT_BYTES", BOUND)
    path = tmp_path / "w.duckdb"
    wal = Path(f"{path}.wal")
    # An hour: only the WAL's size can bring a checkpoint within this test.
    store = DuckDBStore(path, checkpoint_interval=3600.0)
    await store.open()
    try:
        written = 0
        while wal_bytes(wal) < BOUND:
            await store.ingest(events(written, 200))
            written += 200
        deadline = time.monotonic() + 30
        while wal_bytes(wal) >= BOUND:
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            await asyncio.sleep(0.05)
    finally:
        await store.close()
