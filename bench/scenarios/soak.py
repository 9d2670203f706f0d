"""soak: a steady stream of deliveries into nginx; the memory of every process of the
daemon (the daemon and its database process), sampled once a second, and whether it stays
flat after warm-up.

A closed loop keeps the stream steady at the daemon's own pace: the producer sends the next
batch of 500 events only while fewer than WINDOW are ingested but not yet delivered, so the
queue's backlog stays bounded and what grows is what the daemon keeps, not the work
waiting. Bounded by count (400,000 deliveries, 20,000 with --quick) and, with --duration,
by time. Figures: the peak of all processes, and the peak of each tenth of the run (after
warm-up, a flat run has its later tenths' peaks no higher than the earlier ones').
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import (
    Figures,
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
from bench.events import INGEST_BATCH, batches
from bench.measure import daemon_group
from bench.procfs import cpu_seconds, proc_status
from bench.sink import Nginx

WINDOW = 5_000  # events ingested but not yet delivered, at most
HOOKS = 10
TARGET_MB = 300


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    total = 20_000 if args.quick else 400_000
    limit_s = float(args.duration) if args.duration else float("inf")
    # (seconds, MB of all processes, MB of the daemon's own process, delivered)
    samples: list[tuple[float, float, float, int]] = []
    with started(Nginx(args.nginx_workers)) as nginx, workdir("soak") as work:
        async with daemon_group(work) as group:
            (daemon,) = group
            api = bench_api(daemon.url)
            try:
                for i in range(HOOKS):
                    await create_webhook(api, f"{nginx.url}/hook/{i}", [f"t{i}"])
                bodies = batches(total, HOOKS, "soak")
                base = await api.delivered_attempts() or 0.0
                sent = 0
                t0 = time.perf_counter()
                cpu0 = cpu_seconds(daemon.pid)
                next_sample = 0.0
                done = 0
                while done < total and time.perf_counter() - t0 < limit_s:
                    done = int((await api.delivered_attempts() or 0.0) - base)
                    now = time.perf_counter() - t0
                    if now >= next_sample:
                        daemon.sample_rss()
                        own = proc_status(daemon.pid).get("VmRSS", 0) / 1024
                        samples.append((now, daemon.rss_samples_kb[-1] / 1024, own, done))
                        next_sample = now + 1.0
                    if sent < len(bodies) and sent * INGEST_BATCH - done < WINDOW:
                        status, payload = await api.request("POST", "/v1/events", raw=bodies[sent])
                        if status != 202:
                            raise RuntimeError(f"ingest answered {status}: {payload}")
                        sent += 1
                    else:
                        await asyncio.sleep(0.05)
                seconds = time.perf_counter() - t0
                cpu = cpu_seconds(daemon.pid) - cpu0
                daemon.sample_rss()
                memory = daemon.memory()
                errors = logged_errors(group)
            finally:
                await api.close()
    tenths: list[list[tuple[float, float]]] = [[] for _ in range(10)]
    for at, mb, own, _ in samples:
        tenths[min(9, int(10 * at / seconds))].append((mb, own))
    peaks = [round(max(m for m, _ in t), 1) if t else None for t in tenths]
    rows = [
        [
            f"{10 * i}-{10 * (i + 1)} %",
            len(t),
            peak,
            round(max(o for _, o in t), 1) if t else None,
            round(max(m - o for m, o in t), 1) if t else None,
        ]
        for i, (t, peak) in enumerate(zip(tenths, peaks, strict=True))
    ]
    table(
        f"soak: {done} deliveries over {HOOKS} webhooks into nginx in {seconds:.0f} s "
        f"({done / seconds:.0f}/s), at most {WINDOW} waiting; RSS of the daemon and its "
        f"database process, sampled every second (load {machine_load()})",
        ["part of the run", "samples", "peak MB (all)", "daemon MB", "database process MB"],
        rows,
    )
    later = [p for p in peaks[2:] if p is not None]
    settled = [p for p in peaks[1:3] if p is not None]
    growth = round(max(later) - max(settled), 1) if later and settled else None
    figures: Figures = {
        "deliveries": done,
        "seconds": round(seconds, 1),
        "per_second": round(done / seconds, 1),
        "cpu_us_per_delivery": round(cpu / max(1, done) * 1e6, 1),
        "peak_mb": memory.get("peak_rss_mb"),
        "peak_mb_by_tenth": peaks,
        "growth_after_warmup_mb": growth,
        "samples": [(round(a, 1), round(m, 1), round(o, 1), d) for a, m, o, d in samples],
        **memory,
    }
    if errors:
        figures["daemon_errors"] = errors
    print(
        f"  peak of all processes {figures['peak_mb']} MB (target <= {TARGET_MB}); the "
        f"later tenths' peak over that of the 10-30 % ones: {growth:+} MB"
        if growth is not None
        else f"  peak of all processes {figures['peak_mb']} MB (target <= {TARGET_MB})"
    )
    line = last_line(
        "soak",
        {
            "deliveries": done,
            "per_second": figures["per_second"],
            "peak_mb": figures["peak_mb"],
            "target_mb": TARGET_MB,
            "growth_after_warmup_mb": growth,
            **engine_keys(figures),
        },
    )
    return figures, line
