"""The floor under issue 11's idle target (send -> 202, p99 of 200 sequential, <= 5 ms).

    python -m bench.idle_floor [--n 200]

Times each thing an idle 202 cannot do without, alone, with nothing of webhookd in it, the
way the latency scenario times its idle phase (N requests one at a time, 20 ms apart):

- `http 202`: an aiohttp client POSTing an event's JSON to a bare aiohttp server (uvloop,
  a process of its own, as the daemon is) that answers 202 once it has read the body;
- `duckdb commit`: a one-row INSERT and COMMIT on a fresh DuckDB file (its WAL's fsync);
- `postgresql commit`: a one-row INSERT, committed, through asyncpg, on a throwaway server
  (the test kit's, tests/kit/pg.py: fsync on, loopback) or WEBHOOKD_TEST_POSTGRES_URL's.

An engine's commit plus the HTTP row is what no code of webhookd can go under on this
machine; the daemon adds the request's validation, its own bookkeeping and, on DuckDB, the
hop to the database process (bench.ingest_phases times those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procfs import percentile
from tests.kit.pg import pg_cluster
from tests.kit.procs import free_port

GAP = 0.02  # between requests, as the latency scenario's idle phase


def serve(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"accepted": 1}, status=202)

    app = web.Application()
    app.router.add_post("/v1/events", accept)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def http_202(port: int, n: int) -> list[float]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/v1/events"
        deadline = time.monotonic() + 10
        while True:
            try:
                async with session.post(url, data=b"{}") as response:
                    await response.read()
                break
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        times = []
        for i in range(n):
            body = json.dumps({"id": f"evt_{i:05d}", "type": "t0", "data": {"i": i}}).encode()
            started = time.perf_counter()
            async with session.post(url, data=body) as response:
                await response.read()
                assert response.status == 202
            times.append(time.perf_counter() - started)
            await asyncio.sleep(GAP)
        return times


def duckdb_commit(work: Path, n: int) -> list[float]:
    import duckdb

    con = duckdb.connect(str(work / "floor.duckdb"))
    con.execute("CREATE TABLE t (id VARCHAR PRIMARY KEY, body BLOB)")
    times = []
    for i in range(n):
        started = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        con.execute("INSERT INTO t VALUES (?, ?)", [f"evt_{i:05d}", b"x" * 200])
        con.execute("COMMIT")
        times.append(time.perf_counter() - started)
        time.sleep(GAP)
    con.close()
    return times


async def postgresql_commit(url: str, n: int) -> list[float]:
    import asyncpg  # type: ignore[import-untyped]

    con = await asyncpg.connect(url)
    try:
        # Not a temporary table: those write no WAL, and the commit's flush is the point.
        await con.execute("CREATE SCHEMA IF NOT EXISTS idle_floor")
        await con.execute("DROP TABLE IF EXISTS idle_floor.t")
        await con.execute("CREATE TABLE idle_floor.t (id text PRIMARY KEY, body bytea)")
        times = []
        for i in range(n):
            started = time.perf_counter()
            await con.execute(
                "INSERT INTO idle_floor.t VALUES ($1, $2)", f"evt_{i:05d}", b"x" * 200
            )
            times.append(time.perf_counter() - started)
            await asyncio.sleep(GAP)
        await con.execute("DROP SCHEMA idle_floor CASCADE")
        return times
    finally:
        await con.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.idle_floor", "--serve", str(port)])
    try:
        results: dict[str, list[float]] = {"http 202": asyncio.run(http_202(port, args.n))}
    finally:
        server.terminate()
        server.wait()
    with tempfile.TemporaryDirectory(prefix="webhookd-floor-") as tmp:
        results["duckdb commit"] = duckdb_commit(Path(tmp), args.n)
    with pg_cluster() as cluster:
        results["postgresql commit"] = asyncio.run(postgresql_commit(cluster.url, args.n))
    for name, values in results.items():
        p50, p99 = 1000 * percentile(values, 50), 1000 * percentile(values, 99)
        print(f"  {name:<18} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    # Independent parts: their p50s add up to about the p50 of the whole; a part whose
    # own p99 is above the target puts the whole's p99 above it too.
    figures = {"http_p50_ms": 1000 * percentile(results["http 202"], 50)}
    for engine in ("duckdb", "postgresql"):
        commits = results[f"{engine} commit"]
        figures[f"{engine}_p50_floor_ms"] = figures["http_p50_ms"] + 1000 * percentile(commits, 50)
        figures[f"{engine}_commit_p99_ms"] = 1000 * percentile(commits, 99)
    figures["http_p99_ms"] = 1000 * percentile(results["http 202"], 99)
    print(
        "idle_floor: "
        + " ".join(f"{key}={value:.2f}" for key, value in figures.items())
        + " target_p99_ms=5"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
