"""What a delivery costs when events come one at a time (issue 26): transactions and CPU
per delivery at a low, steady rate, where every event is its own ingest, scan, claim and
outcome, and wake-ups that find nothing cost as much as the work.

    python -m bench.low_rate [--engine postgresql] [--rate 50] [--events 400]
                             [--code DIR [--code DIR ...]] [--rounds 2]

A daemon (`python -m webhookd run`, from each DIR holding a copy of webhookd/, in turn,
`--rounds` times; the working tree without --code) on a fresh database, one webhook to a
loopback aiohttp receiver answering 204, `--events` single events at `--rate` a second.
Prints, per run: the daemon's CPU (with its DuckDB database process) per delivery, the
PostgreSQL server's commits per delivery, and the store's own counters per delivery
(transactions; on PostgreSQL the scans, the claim transactions and the rows claimed by scans).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
from aiohttp import web

from tests.kit.daemon import DaemonProcess
from tests.kit.pg import drop_schema, fresh_schema, pg_cluster

TOKEN = "t" * 40
REPO = Path(__file__).resolve().parent.parent


def cpu_seconds(pid: int) -> float:
    """User + system seconds of a process and its children (DuckDB's database process)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def config(work: Path, url: str | None) -> Path:
    (work / "token").write_text(TOKEN + "\n")
    if url:
        database = f'url = "{url}"\nschema = "{fresh_schema()}"'
    else:
        database = f'path = "{work / "q.duckdb"}"'
    path = work / "webhookd.toml"
    path.write_text(
        f"[database]\n{database}\n"
        f'[admin]\nlisten = "127.0.0.1:0"\ntoken_file = "{work / "token"}"\n'
        "[delivery]\nallow_private_destinations = true\n"
        '[logging]\nlevel = "warning"\n'
    )
    return path


async def one(url: str | None, code: Path, events: int, rate: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="webhookd-low-rate-"))
    path = config(work, url)
    schema = None
    if url:
        schema = path.read_text().split('schema = "')[1].split('"')[0]
    hits = 0
    all_in = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        nonlocal hits
        await request.read()
        hits += 1
        if hits >= events:
            all_in.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{n}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    daemon = DaemonProcess(path, work / "daemon.log", cwd=code, notify=True)
    daemon.start()
    con = await asyncpg.connect(url) if url else None
    commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as s:
            hook = {"url": f"http://127.0.0.1:{port}/h", "event_types": []}
            async with s.post(daemon.url + "/v1/webhooks", json=hook) as r:
                assert r.status == 201, await r.text()
            await asyncio.sleep(1.0)  # start-up work done
            async with s.get(daemon.url + "/v1/status") as r:
                before = (await r.json())["writer"]
            x0 = await con.fetchval(commits) if con else 0
            c0 = cpu_seconds(daemon.pid)
            t0 = time.monotonic()
            for i in range(events):
                async with s.post(
                    daemon.url + "/v1/events", json={"type": "t", "data": {"n": i}}
                ) as r:
                    assert r.status == 202, await r.text()
                await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
            await asyncio.wait_for(all_in.wait(), 60)
            await asyncio.sleep(0.5)  # the last outcomes commit
            async with s.get(daemon.url + "/v1/status") as r:
                after = (await r.json())["writer"]
            x1 = await con.fetchval(commits) if con else 0
            c1 = cpu_seconds(daemon.pid)
    finally:
        daemon.stop()
        if con is not None:
            await con.close()
        if url and schema:
            await drop_schema(url, schema)
        await runner.cleanup()
    figures: dict[str, Any] = {
        "code": str(code),
        "engine": "postgresql" if url else "duckdb",
        "cpu_us_per_delivery": round((c1 - c0) / events * 1e6),
        "server_commits_per_delivery": round((x1 - x0) / events, 2),
    }
    for key in ("transactions", "scans", "claim_transactions", "claimed_by_scans"):
        if key in after:
            figures[f"{key}_per_delivery"] = round((after[key] - before[key]) / events, 2)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["duckdb", "postgresql"], default="duckdb")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--code", type=Path, action="append", default=[])
    args = parser.parse_args()
    codes = args.code or [REPO]
    if args.engine == "duckdb":
        for _ in range(args.rounds):
            for code in codes:
                print(json.dumps(await one(None, code, args.events, args.rate)), flush=True)
        return
    with pg_cluster() as cluster:
        for _ in range(args.rounds):
            for code in codes:
                print(json.dumps(await one(cluster.url, code, args.events, args.rate)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
