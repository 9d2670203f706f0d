"""What an event costs to route with many tenants: the scan (events into the delivery queue)
with 10 webhooks over 5 tenants, and with 10,000 webhooks over 5,000 tenants.

    python -m bench.tenant_routing [--engine duckdb|postgresql] [--events N] [--repeat N]

Each webhook has a tenant; each tenant has two webhooks, each event a tenant (chosen at
random), so every event makes two queue rows in both cases: only the number of webhooks
(and tenants) that the scan must not look at differs. The store is used directly (no
HTTP, no deliveries): webhooks made, events ingested, then the timed part, `scan(500)`
(the daemon's default batch) until every event is enqueued. Prints microseconds per event
for each case (the median of --repeat runs) and their ratio; the LAST line is
`tenant_routing: key=value ...`. PostgreSQL: the test kit's throwaway server, a fresh
schema per run.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tests.kit import pg
from webhookd.events import parse_event
from webhookd.store.base import Store
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.postgres import PostgresStore

BATCH = 500  # scanner.batch_size's default
CASES = ((10, 5), (10_000, 5_000))  # (webhooks, tenants)


@contextmanager
def postgres() -> Iterator[str]:
    with pg.pg_cluster() as cluster:
        yield cluster.url


@asynccontextmanager
async def opened(engine: str, url: str | None) -> AsyncIterator[Store]:
    with tempfile.TemporaryDirectory() as tmp:
        store: Store
        schema = pg.fresh_schema()
        if engine == "duckdb":
            store = DuckDBStore(Path(tmp) / "bench.duckdb")
        else:
            assert url is not None
            store = PostgresStore(url, schema=schema, pool_size=4)
        await store.open()
        try:
            yield store
        finally:
            await store.close()
            if url is not None:
                await pg.drop_schema(url, schema)


async def one_run(engine: str, url: str | None, webhooks: int, tenants: int, events: int) -> float:
    """Microseconds of scanning per event."""
    async with opened(engine, url) as store:
        for first in range(0, webhooks, 200):
            await asyncio.gather(
                *(
                    store.create_webhook(
                        f"http://127.0.0.1:9/{i}",
                        [],
                        "whsec_" + "A" * 32,
                        "",
                        tenant=f"t{i % tenants}",
                    )
                    for i in range(first, min(webhooks, first + 200))
                )
            )
        now = datetime.now(UTC)
        pick = random.Random(7)
        for first in range(0, events, 1000):
            await store.ingest(
                [
                    parse_event(
                        {
                            "type": "invoice.paid",
                            "data": {"n": i},
                            "tenant": f"t{pick.randrange(tenants)}",
                        },
                        i,
                        now,
                    )
                    for i in range(first, min(events, first + 1000))
                ]
            )
        scanned = enqueued = 0
        started = time.perf_counter()
        while scanned < events:
            result = await store.scan(BATCH)
            scanned += result.events
            enqueued += result.enqueued
        seconds = time.perf_counter() - started
        assert enqueued == 2 * events, (enqueued, events)
        return seconds / events * 1e6


async def main(engine: str, events: int, repeat: int) -> None:
    with contextlib_for(engine) as url:
        figures: dict[int, list[float]] = {w: [] for w, _ in CASES}
        for _ in range(repeat):  # the cases interleaved: the machine's drift hits both
            for webhooks, tenants in CASES:
                figures[webhooks].append(await one_run(engine, url, webhooks, tenants, events))
    medians = {w: statistics.median(v) for w, v in figures.items()}
    for webhooks, tenants in CASES:
        runs = ", ".join(f"{v:.1f}" for v in figures[webhooks])
        print(
            f"{engine}: {webhooks:>6} webhooks / {tenants:>5} tenants: "
            f"{medians[webhooks]:7.1f} us an event to route (runs: {runs})"
        )
    small, big = (medians[w] for w, _ in CASES)
    print(
        f"tenant_routing: engine={engine} events={events} repeat={repeat} "
        f"us_10_webhooks={small:.1f} us_10000_webhooks={big:.1f} ratio={big / small:.2f}"
    )


@contextmanager
def contextlib_for(engine: str) -> Iterator[str | None]:
    if engine == "duckdb":
        yield None
    else:
        with postgres() as url:
            yield url


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["duckdb", "postgresql"], default="duckdb")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.engine, args.events, args.repeat))
