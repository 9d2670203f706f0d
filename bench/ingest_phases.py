"""Where an idle ingest's time goes on DuckDB (issue 11), phase by phase.

    python -m bench.ingest_phases [--code DIR] [--n 200]

Runs the store as the daemon does (RemoteStore: the database in its child process), with
two scanner loops and two claim loops waiting in it as the daemon's do, and a fake worker
that records every claim delivered at once. Then N single-event ingests, one at a time,
20 ms apart, and prints p50 / p99 of:

- `duckdb commit`: one-row INSERT + COMMIT on a cursor of a fresh file (the floor: the
  commit and its fsync, nothing of webhookd);
- `round trip`: a call to the database process that touches no writer (get_webhook);
- `ingest`: RemoteStore.ingest of one event, as the API awaits it before its 202;
- `ingest -> claimed`: from the ingest's start to the claim of its event by the worker.

`--code DIR` runs a saved copy of webhookd/ (DIR holds webhookd/), e.g. the code before a
change, so that both can be timed in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def line(name: str, values: list[float]) -> str:
    return (
        f"  {name:<20} p50 {pct(values, 50):6.2f} ms   p99 {pct(values, 99):6.2f} ms   "
        f"mean {statistics.fmean(values) * 1000:6.2f} ms"
    )


def duckdb_floor(work: Path, n: int) -> list[float]:
    import duckdb

    con = duckdb.connect(str(work / "floor.duckdb"))
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
    cur = con.cursor()
    times = []
    for i in range(n):
        t = time.perf_counter()
        cur.execute("BEGIN TRANSACTION")
        cur.execute("INSERT INTO t VALUES (?, ?)", [i, b"x" * 200])
        cur.execute("COMMIT")
        times.append(time.perf_counter() - t)
    con.close()
    return times


async def phases(work: Path, n: int) -> dict[str, list[float]]:
    from webhookd.events import parse_event
    from webhookd.signing import new_secret
    from webhookd.states import Status
    from webhookd.store.base import Outcome
    from webhookd.store.duckdb.remote import RemoteStore
    from webhookd.store.records import utcnow

    store = RemoteStore(work / "phases.duckdb", log_level="warning")
    await store.open()
    stopping = asyncio.Event()
    claimed_at: dict[str, float] = {}
    claimed = asyncio.Event()
    try:
        hook = await store.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "")

        async def scanner() -> None:
            while not stopping.is_set():
                await store.scan(500)

        async def claimer() -> None:
            while not stopping.is_set():
                for claim in await store.claim(64, 8, 30):
                    claimed_at[claim.event_id] = time.perf_counter()
                    claimed.set()
                    now = utcnow()
                    store.record(
                        Outcome(
                            claim.webhook_id,
                            claim.event_id,
                            claim.attempt,
                            Status.DELIVERED,
                            None,
                            now,
                            1.0,
                            204,
                            None,
                            "",
                            "delivered",
                            claimed_until=claim.claimed_until,
                        )
                    )

        loops = [asyncio.ensure_future(f()) for f in (scanner, scanner, claimer, claimer)]
        await asyncio.sleep(1.0)
        hop: list[float] = []
        ingest: list[float] = []
        to_claim: list[float] = []
        for i in range(n):
            t = time.perf_counter()
            await store.get_webhook(hook.webhook_id)
            hop.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
            event = parse_event({"id": f"e{i}", "type": "t", "data": {"i": i}}, 0, utcnow())
            claimed.clear()
            t = time.perf_counter()
            await store.ingest([event])
            ingest.append(time.perf_counter() - t)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(claimed.wait(), 5)
            if event.event_id in claimed_at:
                to_claim.append(claimed_at[event.event_id] - t)
            await asyncio.sleep(0.02)
        stopping.set()
        for task in loops:
            task.cancel()
        return {"round trip": hop, "ingest": ingest, "ingest -> claimed": to_claim}
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, help="a directory holding the webhookd/ to time")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
        import os

        # The database process too: it runs `python -m`, which puts its working directory
        # first on its path.
        os.environ["PYTHONPATH"] = str(args.code.resolve())
        os.chdir(args.code)
    import webhookd

    print(f"webhookd from {Path(webhookd.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="webhookd-phases-") as tmp:
        work = Path(tmp)
        results: dict[str, Any] = {"duckdb commit": duckdb_floor(work, args.n)}
        results.update(asyncio.run(phases(work, args.n)))
    for name, values in results.items():
        print(line(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
