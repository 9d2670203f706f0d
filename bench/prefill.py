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
from webhookd.attempts import AttemptResult
from webhookd.config import load_settings
from webhookd.events import NewEvent, parse_event
from webhookd.store.engines import make_store
from webhookd.workers import RetryPolicy, decide

BATCH = 5_000  # events per ingest, scan and claim
LEASE = 3600.0  # seconds: longer than any prefill
DEADLINE = 120.0  # seconds without progress: a store that stops taking rows fails the run
DELIVERED = AttemptResult(204, None, 1.5, "", None)
POLICY = RetryPolicy(max_attempts=1, schedule=[1.0], jitter=0.0)


def events(first: int, count: int) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        parse_event({"id": f"evt_pre_{i:09d}", "type": "t0", "data": event_data(i)}, i, now)
        for i in range(first, first + count)
    ]


class Progress:
    """Fails the prefill when a stage has made no progress for DEADLINE seconds."""

    def __init__(self, stage: str, rows: int) -> None:
        self.stage, self.rows, self.done = stage, rows, 0
        self._since = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count
        if count:
            self._since = time.monotonic()
        elif time.monotonic() - self._since > DEADLINE:
            raise SystemExit(f"prefill: {self.stage} stuck at {self.done} of {self.rows}")


async def prefill(config: Path, rows: int) -> float:
    """The three stages run side by side, as in the daemon (the ingests commit on a writer
    of their own): a batch is scanned and delivered while the next is ingested."""
    started = time.perf_counter()
    store = make_store(load_settings(config))
    await store.open()

    async def ingest() -> None:
        for first in range(0, rows, BATCH):
            await store.ingest(events(first, min(BATCH, rows - first)))

    async def scan() -> None:
        enqueued = Progress("scan", rows)
        while enqueued.done < rows:
            enqueued.add((await store.scan(BATCH)).enqueued)

    async def deliver() -> None:
        delivered = Progress("delivery", rows)
        while delivered.done < rows:
            claims = await store.claim(BATCH, BATCH, LEASE)
            now = datetime.now(UTC)
            await asyncio.gather(*(store.record(decide(c, DELIVERED, POLICY, now)) for c in claims))
            delivered.add(len(claims))

    try:
        await asyncio.gather(ingest(), scan(), deliver())
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
