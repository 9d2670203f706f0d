"""Fixtures and helpers for tests of PostgresStore instances on one schema of the session's
server (conftest `pg`, `pg_schema`): each store stands for a daemon. A pytest plugin of
conftest: `stores` opens stores (all closed at the end), `con` is a plain connection on the
schema, as a producer or an operator would have."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.pg import PgCluster
from webhookd.store.postgres import PostgresStore

Make = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def stores(pg: PgCluster, pg_schema: str) -> AsyncIterator[Make]:
    opened: list[PostgresStore] = []

    async def open_store(**kwargs: Any) -> PostgresStore:
        store = PostgresStore(pg.url, schema=pg_schema, **kwargs)
        await store.open()
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def con(pg: PgCluster, pg_schema: str) -> AsyncIterator[Any]:
    connection = await asyncpg.connect(pg.url, server_settings={"search_path": pg_schema})
    yield connection
    await connection.close()


async def poll(check: Callable[[], Awaitable[bool]], deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not await check():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def scan_all(store: PostgresStore) -> int:
    """Scan until the scanner finds nothing more; the events it passed."""
    seen = 0
    while (n := (await store.scan(100)).events) > 0:
        seen += n
    return seen
