"""scale: throughput with a big queue and log (prefilled through the store) against a
small one, and the peak RSS."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.code import BenchError, code_dir, code_env
from bench.common import (
    Figures,
    csv,
    delivered,
    engine_keys,
    last_line,
    machine_load,
    median_run,
    pair_ratios,
    repeats,
    started,
    table,
    workdir,
)
from bench.daemons import BenchDaemon, create_webhook
from bench.daemons import api as bench_api
from bench.events import batches
from bench.measure import deliver
from bench.sink import Nginx


def prefill(daemon: BenchDaemon, rows: int) -> float:
    """`rows` delivered rows in the stopped daemon's queue and log, through the store's own
    calls (`python -m bench.prefill` on the code the daemon runs). Returns seconds taken."""
    command = [sys.executable, "-m", "bench.prefill", "--config", str(daemon.config)]
    try:
        done = subprocess.run(
            [*command, "--rows", str(rows)],
            capture_output=True,
            text=True,
            cwd=code_dir(),
            env=code_env(dict(daemon.env)),
            timeout=3600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"prefill of {rows} rows took over an hour") from None
    if done.returncode != 0:
        raise BenchError(f"prefill failed ({done.returncode}): {done.stderr[-2000:]}")
    seconds: float = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return seconds


def copy_database(src: Path, dst: Path) -> None:
    """Copy a (stopped) daemon's database file, and its .wal if any, to dst."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + ".wal"))


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    n_events = 2_000 if args.quick else 20_000
    sizes = (10_000, 100_000) if args.quick else (10_000, 1_000_000)
    repeat = repeats(args)
    figures: Figures = {"events": n_events, "repeat": repeat, "load_before": machine_load()}
    runs: dict[int, list[Figures]] = {size: [] for size in sizes}
    with started(Nginx(args.nginx_workers)) as nginx, contextlib.ExitStack() as stack:
        url = f"{nginx.url}/hook/0"
        # Prefill each size once; every run starts from a copy of that database, so the
        # deliveries of one run do not pile up into the next.
        prefilled: dict[int, tuple[Path, dict[str, Any]]] = {}
        for size in sizes:
            work = stack.enter_context(workdir(f"scale{size}-prefill"))
            # First start: schema and the webhook; then prefill with the daemon stopped
            # (a blocking call: nothing else runs meanwhile).
            first = BenchDaemon(work)
            with started(first):
                api = bench_api(first.url)
                try:
                    await create_webhook(api, url, ["t0"])
                finally:
                    await api.close()
            seconds = prefill(first, size)
            prefilled[size] = (
                first.db_path,
                {
                    "prefill_rows": size,
                    "prefill_s": round(seconds, 1),
                    "db_mb": round(first.db_path.stat().st_size / 1e6, 1),
                },
            )
        bodies = {size: batches(n_events, 1, f"scale{size}") for size in sizes}
        for r in range(repeat):
            for size in sizes:  # interleaved: small, big, small, big, ...
                db, info = prefilled[size]
                with workdir(f"scale{size}r{r}") as work:
                    daemon = BenchDaemon(work)
                    copy_database(db, daemon.db_path)
                    start0 = time.perf_counter()
                    with started(daemon):
                        startup = time.perf_counter() - start0
                        api = bench_api(daemon.url)
                        try:
                            base = delivered(await api.status())
                            if base != size:
                                raise BenchError(f"prefill: {base} delivered rows, expected {size}")
                            run = await deliver(
                                daemon,
                                api,
                                bodies[size],
                                delivered,
                                size + n_events,
                                deadline=120 if args.quick else 300,
                            )
                        finally:
                            await api.close()
                run.update(info, startup_s=round(startup, 2), rep=r)
                runs[size].append(run)
    small_runs, big_runs = (runs[s] for s in sizes)
    ratios = pair_ratios(small_runs, big_runs)
    ratio = round(statistics.median(ratios), 3)
    peak_rss = max(run.get("peak_rss_mb", 0.0) for run in big_runs)
    rows = []
    for size in sizes:
        med = median_run(runs[size])
        figures[f"rows{size}"] = med
        figures[f"rows{size}_runs"] = runs[size]
        rows.append(
            [
                f"{size:,} rows",
                n_events,
                med["per_second"],
                csv(r["per_second"] for r in runs[size]),
                med["daemon_cpu_us_per_delivery"],
                med["status_poll_ms_mean"],
                med["metrics_poll_ms_mean"],
                max(r.get("peak_rss_mb", 0.0) for r in runs[size]),
                med["db_mb"],
                med["startup_s"],
            ]
        )
    small, big = (figures[f"rows{s}"] for s in sizes)
    figures.update(ratios=ratios, ratio=ratio, peak_rss_mb=peak_rss, load_after=machine_load())
    table(
        f"scale: {n_events} deliveries to 1 webhook with the queue and log prefilled, "
        f"median of {repeat} (load {figures['load_before']})",
        [
            "prefill",
            "deliveries",
            "daemon/s",
            "runs/s",
            "cpu us/deliv",
            "status poll ms",
            "metrics poll ms",
            "peak MB (max)",
            "db MB",
            "start s",
        ],
        rows,
    )
    print(
        f"  {sizes[1]:,} / {sizes[0]:,} rows, run by run: {', '.join(map(str, ratios))}; "
        f"median {ratio} (target >= 0.85); peak RSS {peak_rss} MB (target <= 250 MB)"
    )
    if not all(r["complete"] for r in small_runs + big_runs):
        print("  WARNING: some runs did not complete before their deadline")
    line = last_line(
        "scale",
        {
            "small_rows": sizes[0],
            "small_per_s": small["per_second"],
            "big_rows": sizes[1],
            "big_per_s": big["per_second"],
            "ratio": ratio,
            "peak_rss_mb": peak_rss,
            "target_ratio": 0.85,
            "target_rss_mb": 250,
            "repeat": repeat,
            "ratios": csv(ratios),
            **engine_keys(figures),
        },
    )
    return figures, line
