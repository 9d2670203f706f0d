"""What single-event ingests cost the DuckDB database process (issue 11).

    python -m bench.ingest_rate [--code DIR] [--rate 100] [--seconds 10]

The store in its child process as the daemon runs it (RemoteStore), with two scanner loops
and two claim loops waiting in it, and a fake worker that records every claim delivered
2 ms later. Ingests of one event each at a fixed rate (open loop); prints the database
process's CPU and the transactions (both writers) per event, and p50 / p99 of the
ingest (what a 202 waits for). `--code DIR` runs a saved copy of webhookd/ (DIR holds
webhookd/), e.g. the code before a change, so that both can be measured in one sitting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000


async def measure(work: Path, rate: int, seconds: int) -> str:
    from webhookd.events import parse_event
    from webhookd.signing import new_secret
    from webhookd.states import Status
    from webhookd.store.base import Outcome
    from webhookd.store.duckdb.remote import RemoteStore
    from webhookd.store.records import utcnow

    store = RemoteStore(work / "rate.duckdb", log_level="warning")
    await store.open()
    stopping = asyncio.Event()
    try:
        await store.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "")

        async def scanner() -> None:
            while not stopping.is_set():
                await store.scan(500)

        async def claimer() -> None:
            while not stopping.is_set():
                for c in await store.claim(64, 8, 30):
                    await asyncio.sleep(0.002)
                    now = utcnow()
                    store.record(
                        Outcome(
                            c.webhook_id,
                            c.event_id,
                            c.attempt,
                            Status.DELIVERED,
                            None,
                            now,
                            1.0,
                            204,
                            None,
                            "",
                            "delivered",
                            claimed_until=c.claimed_until,
                        )
                    )

        loops = [asyncio.ensure_future(f()) for f in (scanner, scanner, claimer, claimer)]
        await asyncio.sleep(1.0)
        assert store.pid is not None
        stats0, cpu0 = store.stats(), cpu_seconds(store.pid)
        waits: list[float] = []

        async def one(i: int) -> None:
            event = parse_event({"id": f"e{i}", "type": "t", "data": {"i": i}}, 0, utcnow())
            t = time.perf_counter()
            await store.ingest([event])
            waits.append(time.perf_counter() - t)

        n = rate * seconds
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
        cpu = cpu_seconds(store.pid) - cpu0
        stats = store.stats()
        stopping.set()
        for task in loops:
            task.cancel()
        return (
            f"  {n} events at {rate}/s: database process CPU {cpu / n * 1e6:.0f} us/event, "
            f"transactions {(stats['transactions'] - stats0['transactions']) / n:.2f}/event; "
            f"ingest p50 {pct(waits, 50):.1f} ms, p99 {pct(waits, 99):.1f} ms"
        )
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, help="a directory holding the webhookd/ to run")
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if args.code is not None:
        # The database process too: it runs `python -m`, which puts its working directory
        # first on its path.
        sys.path.insert(0, str(args.code.resolve()))
        os.environ["PYTHONPATH"] = str(args.code.resolve())
        os.chdir(args.code)
    import webhookd

    print(f"webhookd from {Path(webhookd.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="webhookd-rate-") as tmp:
        print(asyncio.run(measure(Path(tmp), args.rate, args.seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
