"""throughput: deliveries/s to nginx, 1 webhook and 10, against the bare loop."""

from __future__ import annotations

import argparse
import os

from bench.common import (
    ENGINE,
    PER_WEBHOOK,
    WORKERS,
    Figures,
    connections,
    csv,
    engine_keys,
    last_line,
    machine_load,
    median_run,
    repeats,
    started,
    table,
    workdir,
)
from bench.measure import daemon_run
from bench.sink import Nginx, run_baseline


def cpu_ratio(run: Figures, base: Figures) -> float | None:
    """CPU per delivery of every process of webhookd's (and, on PostgreSQL, the server's)
    over the bare loop's CPU per POST, from the same run."""
    used = run.get("total_cpu_us_per_delivery") or run["daemon_cpu_us_per_delivery"]
    return round(used / base["cpu_us_per_post"], 2) if base.get("cpu_us_per_post") else None


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    n_events = 2_000 if args.quick else 20_000
    repeat = repeats(args)
    figures: Figures = {
        "events": n_events,
        "workers": WORKERS,
        "repeat": repeat,
        "load_before": machine_load(),
    }
    pg = ENGINE.pg
    if pg is not None:
        figures.update(engine=ENGINE.name, daemons=ENGINE.daemons)
    rows = []
    with started(Nginx(args.nginx_workers)) as nginx:
        for n_hooks in (1, 10):
            urls = [f"{nginx.url}/hook/{i}" for i in range(n_hooks)]
            base_runs, daemon_runs = [], []
            for r in range(repeat):
                base_runs.append(run_baseline(urls, n_events, WORKERS, sink_pids=nginx.pids()))
                with workdir(f"tp{n_hooks}") as work:
                    profile = None
                    if args.profile and r == 0:
                        profile = args.profile.with_name(
                            f"{args.profile.stem}-{n_hooks}hook{args.profile.suffix}"
                        )
                    daemon_runs.append(
                        await daemon_run(
                            work,
                            urls,
                            n_events,
                            tag=f"tp{n_hooks}r{r}",
                            profile=profile,
                            sink_pids=nginx.pids(),
                        )
                    )
            base = median_run(base_runs)
            run = median_run(daemon_runs)
            ratio = round(run["per_second"] / base["per_second"], 3) if base["per_second"] else 0.0
            figures[f"hooks{n_hooks}"] = {
                "daemon": run,
                "baseline": base,
                "ratio": ratio,
                "cpu_ratio": cpu_ratio(run, base),
            }
            if n_hooks == 1:
                # For reference: one webhook gets at most per_webhook_concurrency (8) slots.
                capped = run_baseline(urls, n_events, PER_WEBHOOK)
                figures["hooks1"]["baseline_per_webhook_cap"] = capped
            if pg is None:
                rows.append(
                    [
                        f"{n_hooks} webhook(s)",
                        n_events,
                        run["per_second"],
                        base["per_second"],
                        ratio,
                        run["daemon_cpu_us_per_delivery"],
                        base["cpu_us_per_post"],
                        cpu_ratio(run, base),
                        run["peak_rss_mb"],
                    ]
                )
            else:
                rows.append(
                    [
                        f"{n_hooks} webhook(s)",
                        n_events,
                        run["per_second"],
                        csv(r["per_second"] for r in daemon_runs),
                        base["per_second"],
                        csv(r["per_second"] for r in base_runs),
                        ratio,
                        run["daemon_cpu_us_per_delivery"],
                        run["db_cpu_us_per_delivery"],
                        run["total_cpu_us_per_delivery"],
                        base["cpu_us_per_post"],
                        cpu_ratio(run, base),
                        run["peak_rss_mb"],
                    ]
                )
        # One run at logging.level = info: one JSON line per attempt, as SPEC requires.
        with workdir("tpinfo") as work:
            urls = [f"{nginx.url}/hook/0"]
            info = await daemon_run(
                work, urls, n_events, tag="tpinfo", overrides={"logging": {"level": "info"}}
            )
            # work/daemon.log, or work/daemon<i>/daemon.log with several daemons.
            log_paths = sorted(work.rglob("daemon.log"))
            info["log_lines"] = sum(1 for path in log_paths for _ in path.open("rb"))
            info["log_mb"] = round(sum(path.stat().st_size for path in log_paths) / 1e6, 2)
        warn = figures["hooks1"]["daemon"]
        # A run that delivered nothing has no rate to compare with (it is reported as such).
        info_cost = (
            round(1 - info["per_second"] / warn["per_second"], 3) if warn["per_second"] else 0.0
        )
        figures["info_level"] = {**info, "slowdown_vs_warning": info_cost}
        base1 = figures["hooks1"]["baseline"]
        info_ratio = round(info["per_second"] / base1["per_second"], 3)
        if pg is None:
            rows.append(
                [
                    "1 webhook, log info",
                    n_events,
                    info["per_second"],
                    base1["per_second"],
                    info_ratio,
                    info["daemon_cpu_us_per_delivery"],
                    base1["cpu_us_per_post"],
                    cpu_ratio(info, base1),
                    info["peak_rss_mb"],
                ]
            )
        else:
            rows.append(
                [
                    "1 webhook, log info",
                    n_events,
                    info["per_second"],
                    "-",
                    base1["per_second"],
                    "-",
                    info_ratio,
                    info["daemon_cpu_us_per_delivery"],
                    info["db_cpu_us_per_delivery"],
                    info["total_cpu_us_per_delivery"],
                    base1["cpu_us_per_post"],
                    cpu_ratio(info, base1),
                    info["peak_rss_mb"],
                ]
            )
    if pg is None:
        table(
            f"throughput: {n_events} events -> {n_events} deliveries (10 webhooks: each its own "
            f"type t<i>, events round-robin), median of {repeat}, load {figures['load_before']}",
            [
                "case",
                "deliveries",
                "daemon/s",
                "baseline/s",
                "ratio",
                "daemon cpu us/deliv",
                "baseline cpu us/post",
                "cpu ratio",
                "peak MB",
            ],
            rows,
        )
    else:
        daemons = f"{ENGINE.daemons} daemon{'s' if ENGINE.daemons > 1 else ''}"
        table(
            f"throughput on PostgreSQL, {daemons} on one schema: {n_events} events -> "
            f"{n_events} deliveries (10 webhooks: each its own type t<i>, events round-robin; "
            f"ingest round-robin over the daemons), median of {repeat}, "
            f"load {figures['load_before']}",
            [
                "case",
                "deliveries",
                "daemons/s",
                "runs/s",
                "baseline/s",
                "baseline runs/s",
                "ratio",
                "daemons cpu us/deliv",
                "db cpu us/deliv",
                "total cpu us/deliv",
                "baseline cpu us/post",
                "cpu ratio",
                "peak MB (all)",
            ],
            rows,
        )
    capped = figures["hooks1"]["baseline_per_webhook_cap"]
    print(
        f"  baseline with {PER_WEBHOOK} concurrent POSTs (one webhook's cap): "
        f"{capped['per_second']}/s; daemon 1 webhook / that: "
        f"{round(figures['hooks1']['daemon']['per_second'] / capped['per_second'], 3)}"
    )
    for name, run in (
        ("1 webhook", figures["hooks1"]["daemon"]),
        ("10 webhooks", figures["hooks10"]["daemon"]),
        ("1 webhook, info", info),
    ):
        shares = ", ".join(f"{k} {v}" for k, v in run["thread_core_share"].items())
        print(f"  daemon threads, share of a core busy ({name}): {shares}")
        if "writer_transactions_per_delivery" in run:
            print(
                f"  store per delivery ({name}): transactions "
                f"{run['writer_transactions_per_delivery']}, operations "
                f"{run['writer_operations_per_delivery']}"
            )
        if pg is not None:
            shares = ", ".join(f"{k} {v}" for k, v in run["db_core_share"].items())
            per = ", ".join(f"{k} {v}" for k, v in run["db_per_delivery"].items())
            print(f"  postgres processes, share of a core busy ({name}): {shares}")
            print(f"  database work per delivery ({name}): {per}")
            print(f"  daemons' connections, mean number by state ({name}): {connections(run)}")
            waits = ", ".join(f"{k} {v}s" for k, v in run["cpu_wait_s"].items())
            print(f"  runnable but waiting for a CPU ({name}, run of {run['seconds']}s): {waits}")
    # Whether the machine, not waiting, sets the pace: when both runs keep every core
    # busy, the ratio of throughputs is the inverse ratio of CPU spent per delivery.
    cores = os.cpu_count()
    for name, key in (("1 webhook", "hooks1"), ("10 webhooks", "hooks10")):
        base, run = figures[key]["baseline"], figures[key]["daemon"]
        print(
            f"  machine ({name}), cores busy of {cores}: baseline "
            f"{base.get('machine_cores_busy')}, daemon {run.get('machine_cores_busy')}; "
            f"nginx CPU per POST: baseline {base.get('sink_cpu_us_per_post')} us, "
            f"daemon {run.get('sink_cpu_us_per_post')} us"
        )
    print(
        f"  logging.level=info: {info['log_lines']} lines, {info['log_mb']} MB; "
        f"slowdown {info_cost:+.1%}, CPU/delivery "
        f"{info['daemon_cpu_us_per_delivery']} us vs {warn['daemon_cpu_us_per_delivery']} us"
    )
    figures["load_after"] = machine_load()
    line = last_line(
        "throughput",
        {
            "deliveries": n_events,
            "daemon_1": figures["hooks1"]["daemon"]["per_second"],
            "baseline_1": figures["hooks1"]["baseline"]["per_second"],
            "ratio_1": figures["hooks1"]["ratio"],
            "daemon_10": figures["hooks10"]["daemon"]["per_second"],
            "baseline_10": figures["hooks10"]["baseline"]["per_second"],
            "ratio_10": figures["hooks10"]["ratio"],
            "cpu_ratio_1": figures["hooks1"]["cpu_ratio"],
            "cpu_ratio_10": figures["hooks10"]["cpu_ratio"],
            "peak_mb_10": figures["hooks10"]["daemon"]["peak_rss_mb"],
            "daemon_1_info": info["per_second"],
            "info_slowdown": info_cost,
            "target_ratio": 0.8,
            **engine_keys(figures),
        },
    )
    return figures, line
