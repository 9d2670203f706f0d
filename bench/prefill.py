"""Fill a stopped daemon's database with delivered rows through the store's own calls.

    python -m bench.prefill --config webhookd.toml --rows 1000000

Each row takes the daemon's path without the HTTP: the store ingests its event, scans it
into the queue, claims it, and records the outcome `decide` makes of a 204. So the queue,
the attempt log and the events hold what a daemon that delivered them would have left,
whatever the engine's schema. The scale scenario runs this in a subprocess on the code the
daemons run (bench.code), with the daemon stopped (DuckDB: one process per file), after
the daemon made the schema and one webhook subscribed to `t0`. Prints the seconds taken,
as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.events import event_data
from webhookd.config import load_settings
from webhookd.events import parse_event
from webhookd.sender import AttemptResult
from webhookd.store.base import Store
from webhookd.store.engines import make_store
from webhookd.workers import RetryPolicy, decide

BATCH = 5_000  # events per ingest, scan and claim
LEASE = 3600.0  # seconds: longer than any prefill
DEADLINE = 120.0  # seconds for one batch: a store that stops taking rows fails the run
DELIVERED = AttemptResult(204, None, 1.5, "", None)
POLICY = RetryPolicy(max_attempts=1, schedule=[1.0], jitter=0.0)


async def deliver_batch(store: Store, first: int, count: int) -> None:
    """Events first .. first+count-1, ingested, enqueued, claimed and delivered."""
    now = datetime.now(UTC)
    events = [
        parse_event({"id": f"evt_pre_{i:09d}", "type": "t0", "data": event_data(i)}, i, now)
        for i in range(first, first + count)
    ]
    await store.ingest(events)
    deadline = time.monotonic() + DEADLINE
    enqueued = claimed = 0
    while enqueued < count:
        enqueued += (await store.scan(count - enqueued)).enqueued
        if time.monotonic() > deadline:
            raise SystemExit(f"prefill: {enqueued} of {count} events enqueued in {DEADLINE}s")
    while claimed < count:
        claims = await store.claim(count - claimed, count, LEASE)
        now = datetime.now(UTC)
        await asyncio.gather(*(store.record(decide(c, DELIVERED, POLICY, now)) for c in claims))
        claimed += len(claims)
        if time.monotonic() > deadline:
            raise SystemExit(f"prefill: {claimed} of {count} rows claimed in {DEADLINE}s")


async def prefill(config: Path, rows: int) -> float:
    started = time.perf_counter()
    store = make_store(load_settings(config))
    await store.open()
    try:
        for first in range(0, rows, BATCH):
            await deliver_batch(store, first, min(BATCH, rows - first))
    finally:
        await store.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--rows", type=int, required=True)
    args = parser.parse_args()
    seconds = asyncio.run(prefill(args.config, args.rows))
    print(json.dumps({"rows": args.rows, "seconds": round(seconds, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
