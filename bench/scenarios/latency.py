"""latency: send -> 202 and 202 -> arrival, one event at a time (idle), then an open
loop at --rate events/s for --duration seconds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from typing import Any

from bench import floor as floors
from bench.common import (
    ENGINE,
    Figures,
    connections,
    delivered,
    engine_keys,
    last_line,
    logged_errors,
    machine_load,
    started,
    table,
    workdir,
)
from bench.daemons import api as bench_api
from bench.daemons import create_webhook
from bench.events import event_data
from bench.measure import Profiler, daemon_group
from bench.procfs import cpu_seconds, runqueue_seconds, summary_ms
from bench.sink import Receiver


async def until_delivered(api: Any, count: int, deadline: float = 10.0) -> None:
    """Poll /v1/status until `count` deliveries are delivered, or `deadline` seconds."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        if delivered(await api.status()) >= count:
            return
        await asyncio.sleep(0.005)


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    rate = args.rate or (200 if args.quick else 500)
    duration = args.duration or (5 if args.quick else 20)
    n = rate * duration
    cap = 1000  # at most this many ingest requests in flight: beyond it a send is skipped
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    failed = skipped = 0
    late = 0.0  # how far behind its clock the load generator fell, at most
    # The floor first, in the same run: the figures below are reported over it.
    floor = await floors.measure(50 if args.quick else 200)
    with workdir("lat") as work, started(Receiver("timestamp")) as receiver:
        async with daemon_group(work) as group:
            # Several daemons: the sends go round-robin over their APIs (256 connections in
            # all), the status is asked of the first.
            apis = [bench_api(d.url, connections=max(1, 256 // len(group))) for d in group]
            api = apis[0]
            try:
                await create_webhook(api, f"{receiver.url}/hook", ["t0"])
                # Idle first: one event at a time to a daemon with nothing else to do,
                # send -> 202. The next leaves once the last one's outcome is committed (the
                # status counts it delivered), then 20 ms: a fixed pause alone let the next
                # ingest meet the last delivery's outcome transaction on DuckDB, whose
                # 202 -> arrival is ~15 ms, and that is not an idle daemon.
                idle_n = 50 if args.quick else 200
                idle: list[float] = []
                for i in range(idle_n):
                    raw = json.dumps(
                        {"id": f"evt_idle_{i:05d}", "type": "t0", "data": event_data(i)}
                    ).encode()
                    t_send = time.perf_counter()
                    status, _ = await api.request("POST", "/v1/events", raw=raw)
                    if status == 202:
                        idle.append(time.perf_counter() - t_send)
                    await until_delivered(api, len(idle))
                    await asyncio.sleep(0.02)
                bodies = [
                    json.dumps(
                        {"id": f"evt_lat_{i:07d}", "type": "t0", "data": event_data(i)}
                    ).encode()
                    for i in range(n)
                ]
                inflight: set[asyncio.Task[None]] = set()
                loop = asyncio.get_running_loop()
                pg = ENGINE.pg
                profilers: list[Profiler] = []
                if args.profile is not None:
                    for i, d in enumerate(group):
                        out = args.profile
                        if len(group) > 1:
                            out = out.with_name(f"{out.stem}-d{i}{out.suffix}")
                        profilers.append(Profiler(d.pid, out))
                watching = asyncio.Event()
                watch = None
                if pg is not None:
                    watch_ready = asyncio.Event()
                    watch = asyncio.create_task(pg.watch(watching, watch_ready))
                    await asyncio.wait_for(watch_ready.wait(), 30)
                db_cpu0 = pg.cpu_seconds() if pg is not None else None
                cpu0 = sum(cpu_seconds(d.pid) for d in group)
                queued0 = (
                    sum(runqueue_seconds(d.pid) for d in group),
                    pg.runqueue_seconds() if pg is not None else None,
                    runqueue_seconds(os.getpid()),
                )
                wall0 = time.perf_counter()

                async def send(i: int) -> None:
                    nonlocal failed
                    event_id = f"evt_lat_{i:07d}"
                    sent[event_id] = time.time()
                    try:
                        status, _ = await apis[i % len(apis)].request(
                            "POST", "/v1/events", raw=bodies[i]
                        )
                    except Exception:
                        failed += 1
                        return
                    if status == 202:
                        acked[event_id] = time.time()
                    else:
                        failed += 1

                t0 = loop.time() + 0.1
                for i in range(n):  # open loop: by the clock, not by the answers
                    delay = t0 + i / rate - loop.time()
                    late = max(late, -delay)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if len(inflight) >= cap:
                        skipped += 1
                        continue
                    task = asyncio.create_task(send(i))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                offered_s = loop.time() - t0
                if inflight:
                    await asyncio.wait(list(inflight), timeout=60)
                await_deadline = time.monotonic() + 60
                while time.monotonic() < await_deadline:
                    if delivered(await api.status()) >= len(acked) + len(idle):
                        break
                    await asyncio.sleep(0.1)
                watching.set()
                activity: dict[str, Any] = {}
                if watch is not None:
                    with contextlib.suppress(Exception):  # a diagnostic: never fails the run
                        activity = await watch
                for profiler in profilers:
                    profiler.close()
                cpu = sum(cpu_seconds(d.pid) for d in group) - cpu0
                db_cpu = pg.cpu_seconds() if pg is not None else None
                queued = (
                    sum(runqueue_seconds(d.pid) for d in group),
                    pg.runqueue_seconds() if pg is not None else None,
                    runqueue_seconds(os.getpid()),
                )
                wall = time.perf_counter() - wall0
                records = (await api.get_json(receiver.url + "/records"))["records"]
                errors = logged_errors(group)
            finally:
                for a in apis:
                    await a.close()
    arrivals: dict[str, float] = {}
    duplicates = 0
    for event_id, t in records:
        if event_id in arrivals:
            duplicates += 1
            arrivals[event_id] = min(arrivals[event_id], t)
        else:
            arrivals[event_id] = t
    raw = [arrivals[e] - acked[e] for e in acked if e in arrivals]
    negatives = sum(1 for v in raw if v < 0)
    lat = [max(0.0, v) for v in raw]
    e2e = [arrivals[e] - sent[e] for e in acked if e in arrivals]
    ingest = [acked[e] - sent[e] for e in acked]
    figures: Figures = {
        "rate": rate,
        "duration_s": duration,
        "offered": n,
        "offered_rate_achieved": round((n - skipped) / offered_s, 1),
        "acked": len(acked),
        "arrived": len(arrivals),
        "missing": len([e for e in acked if e not in arrivals]),
        "duplicates": duplicates,
        "failed": failed,
        "skipped": skipped,
        "generator_late_ms": round(late * 1000, 1),
        "negative_latencies": negatives,
        "latency": summary_ms(lat),
        "end_to_end": summary_ms(e2e),
        "ingest_202": summary_ms(ingest),
        "idle_202": summary_ms(idle),
        "load": machine_load(),
    }
    # idle send -> 202 over (POST + commit); send -> arrival over (POST + commit + POST):
    # the ingest's request, its commit, and the delivery's request.
    idle_floor = floors.p99(floor, "http", "commit")
    arrival_floor = floors.p99(floor, "http", "commit", "http")
    figures["floor"] = {
        **floor,
        "idle_202_p99_ms": idle_floor,
        "send_arrival_p99_ms": arrival_floor,
        "idle_202_ratio": floors.ratio(figures["idle_202"].get("p99_ms"), idle_floor),
        "send_arrival_ratio": floors.ratio(figures["end_to_end"].get("p99_ms"), arrival_floor),
    }
    if errors:
        figures["daemon_errors"] = errors
    if ENGINE.pg is not None:
        events = max(1, len(acked))
        figures.update(
            engine=ENGINE.name,
            daemons=ENGINE.daemons,
            daemon_cpu_us_per_event=round(cpu / events * 1e6, 1),
            db_cpu_us_per_event=(
                None
                if db_cpu is None or db_cpu0 is None
                else round((db_cpu - db_cpu0) / events * 1e6, 1)
            ),
            db_connections=activity.get("connections", {}),
            wall_s=round(wall, 1),
            cpu_wait_s={
                name: None if a is None or b is None else round(b - a, 2)
                for name, a, b in zip(("daemons", "db", "bench"), queued0, queued, strict=True)
            },
        )
    # Where the latencies fall: a wake-up that waits for the scanner's or the workers' poll
    # (scanner.poll_interval 250 ms by default) shows as a bump at 25 ms and beyond.
    edges = (5, 10, 25, 50, 100, 250)
    buckets: dict[str, int] = {}
    for lo, hi in zip((0, *edges), (*edges, None), strict=True):
        name = f"{lo}-{hi}ms" if hi is not None else f">={lo}ms"
        buckets[name] = sum(1 for v in lat if v * 1000 >= lo and (hi is None or v * 1000 < hi))
    figures["latency_buckets"] = buckets
    table(
        f"latency: {n} events, one per request, open loop at {rate}/s for {duration}s "
        f"(load {figures['load']})",
        ["measure", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            [name, f["count"], f.get("p50_ms"), f.get("p90_ms"), f.get("p99_ms"), f.get("max_ms")]
            for name, f in (
                ("202 -> arrival (latency)", figures["latency"]),
                ("send -> arrival", figures["end_to_end"]),
                ("send -> 202 (ingest)", figures["ingest_202"]),
            )
        ],
    )
    idle_202 = figures["idle_202"]
    fl = figures["floor"]
    table(
        f"against the floor of this run (p99: a bare POST {fl['http'].get('p99_ms')} ms, "
        f"a one-row {ENGINE.name} commit {fl['commit'].get('p99_ms')} ms)",
        ["figure", "p99 ms", "floor ms", "ratio"],
        [
            [
                "idle send -> 202 / (POST + commit)",
                idle_202.get("p99_ms"),
                idle_floor,
                fl["idle_202_ratio"],
            ],
            [
                f"{rate}/s send -> arrival / (POST + commit + POST)",
                figures["end_to_end"].get("p99_ms"),
                arrival_floor,
                fl["send_arrival_ratio"],
            ],
        ],
    )
    print(
        f"  idle: {idle_202.get('count', 0)} events one at a time, send -> 202: "
        f"p50 {idle_202.get('p50_ms')} ms, p99 {idle_202.get('p99_ms')} ms, "
        f"max {idle_202.get('max_ms')} ms"
    )
    print(
        f"  negative (arrival before the 202, counted as 0): {negatives}; "
        f"missing {figures['missing']}, failed {failed}, skipped {skipped}; the load "
        f"generator fell behind its clock by {figures['generator_late_ms']} ms at most"
    )
    total = max(1, len(lat))
    print(
        "  202 -> arrival by bucket: "
        + ", ".join(f"{k} {v} ({v / total:.1%})" for k, v in buckets.items())
    )
    if ENGINE.pg is not None:
        print(
            f"  CPU per event (whole run): daemons {figures['daemon_cpu_us_per_event']} us, "
            f"database {figures['db_cpu_us_per_event']} us"
        )
        print(f"  daemons' connections, mean number by state: {connections(figures)}")
        waits = ", ".join(f"{k} {v}s" for k, v in figures["cpu_wait_s"].items())
        print(f"  runnable but waiting for a CPU (run of {figures['wall_s']}s): {waits}")
    line = last_line(
        "latency",
        {
            "count": figures["latency"].get("count", 0),
            "p50_ms": figures["latency"].get("p50_ms"),
            "p99_ms": figures["latency"].get("p99_ms"),
            "max_ms": figures["latency"].get("max_ms"),
            "negatives": negatives,
            "missing": figures["missing"],
            "rate": rate,
            "target_p99_ms": 25,
            "idle_202_p50_ms": idle_202.get("p50_ms"),
            "idle_202_p99_ms": idle_202.get("p99_ms"),
            "send_202_p50_ms": figures["ingest_202"].get("p50_ms"),
            "send_202_p99_ms": figures["ingest_202"].get("p99_ms"),
            "send_arrival_p50_ms": figures["end_to_end"].get("p50_ms"),
            "send_arrival_p99_ms": figures["end_to_end"].get("p99_ms"),
            "idle_202_floor_ms": idle_floor,
            "idle_202_ratio": fl["idle_202_ratio"],
            "send_arrival_floor_ms": arrival_floor,
            "send_arrival_ratio": fl["send_arrival_ratio"],
            **engine_keys(figures),
        },
    )
    return figures, line
