"""What a transaction left open costs the PostgreSQL scanner (issue 22, item 4).

    python -m bench.scan_open_transaction [--events 20000] [--empty 200]

On a throwaway server (tests/kit/pg.py), one store (a daemon) with one webhook: ingest
--events events in requests of 500 and time the scans that enqueue them (scan(500) until
none is left), then time --empty scans that find nothing, and one status() (its lag
count); first with no other transaction, then with a transaction open in another database
of the cluster and a producer's transaction holding an unscanned event (the scanner's
snapshots carry both in their xip lists, and every event ingested meanwhile is scanned
past them). Before issue 22 the second case scanned nothing at all until they ended.
Prints µs per event scanned, µs per empty scan, and ms per status(), for each case.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from tests.kit.pg import fresh_schema, pg_cluster
from webhookd.events import parse_event
from webhookd.signing import new_secret
from webhookd.store.postgres import PostgresStore


async def measure(store: PostgresStore, prefix: str, n: int, empty: int) -> dict[str, float]:
    now = datetime.now(UTC)
    for start in range(0, n, 500):
        await store.ingest(
            [
                parse_event({"id": f"{prefix}-{i}", "type": "t", "data": {"n": i}}, i, now)
                for i in range(start, min(n, start + 500))
            ]
        )
    started = time.perf_counter()
    scanned = 0
    while (found := (await store.scan(500)).events) > 0:
        scanned += found
    scan_s = time.perf_counter() - started
    assert scanned == n, (scanned, n)
    started = time.perf_counter()
    for _ in range(empty):
        await store.scan(500)
    empty_s = time.perf_counter() - started
    started = time.perf_counter()
    report = await store.status()
    status_s = time.perf_counter() - started
    return {
        "us_per_event": scan_s / n * 1e6,
        "us_per_empty_scan": empty_s / empty * 1e6,
        "ms_per_status": status_s * 1e3,
        "lag": float(report.scanner_lag_events),
    }


async def main(events: int, empty: int) -> None:
    with pg_cluster() as cluster:
        schema = fresh_schema()
        store = PostgresStore(cluster.url, schema=schema)
        await store.open()
        try:
            await store.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "")
            quiet = await measure(store, "quiet", events, empty)
            blocker = await asyncpg.connect(cluster.url.rsplit("/", 1)[0] + "/template1")
            producer: Any = await asyncpg.connect(
                cluster.url, server_settings={"search_path": schema}
            )
            await blocker.execute("BEGIN")
            await blocker.fetchval("SELECT pg_current_xact_id()")
            await producer.execute("BEGIN")
            await producer.fetchval("SELECT publish('held', 't', '{}')")
            first = await measure(store, "open1", events, empty)
            later = await measure(store, "open2", events, empty)
            await producer.execute("COMMIT")
            await blocker.execute("ROLLBACK")
            await blocker.close()
            await producer.close()
            assert (await store.scan(500)).events == 1
        finally:
            await store.close()
    for name, figures in (
        ("no transaction open", quiet),
        (f"open, first {events} events behind it", first),
        (f"open, next {events} events behind it", later),
    ):
        print(
            f"{name:40} scan {figures['us_per_event']:7.1f} µs/event   "
            f"empty scan {figures['us_per_empty_scan']:7.1f} µs   "
            f"status {figures['ms_per_status']:6.1f} ms (lag {figures['lag']:.0f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--empty", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.empty))
