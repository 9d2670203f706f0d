"""isolation: healthy webhooks beside black holes, and unlimited webhooks beside
rate-limited ones, each against the same webhooks alone."""

from __future__ import annotations

import argparse
import statistics

from bench.common import (
    Figures,
    csv,
    engine_keys,
    last_line,
    machine_load,
    median_run,
    pair_ratios,
    profile_of,
    repeats,
    started,
    table,
    workdir,
)
from bench.measure import daemon_run
from bench.sink import Nginx, Receiver

RATE_LIMIT = 10  # deliveries/s of each rate-limited webhook in the isolation scenario


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    n_events = 2_000 if args.quick else 20_000
    timeout = "2s" if args.quick else "5s"
    overrides = {"delivery": {"timeout": timeout}}
    healthy = list(range(5))
    repeat = repeats(args)
    figures: Figures = {
        "events": n_events,
        "timeout": timeout,
        "repeat": repeat,
        "load_before": machine_load(),
    }
    all_runs: list[Figures] = []
    mixed_runs: list[Figures] = []
    # Issue 12: 5 webhooks limited to RATE_LIMIT/s beside 5 unlimited, against those 5
    # unlimited alone with the same traffic: the same events, nobody subscribed to the
    # limited ones' types. As in the black-hole case, both arms ingest the same events,
    # so the ratio measures what the rate-limited webhooks cost the others (the target).
    # Also printed: against the 5 alone with only their own events (half the traffic),
    # which adds what ingesting and scanning twice the events costs a full machine.
    same_traffic_runs: list[Figures] = []
    limited_runs: list[Figures] = []
    alone_runs: list[Figures] = []
    limited = {i: {"rate_limit": RATE_LIMIT} for i in range(5, 10)}
    with started(Nginx(args.nginx_workers)) as nginx, started(Receiver("blackhole")) as hole:
        good = [f"{nginx.url}/hook/{i}" for i in range(10)]
        mixed_urls = good[:5] + [f"{hole.url}/hook/{i}" for i in range(5, 10)]
        for r in range(repeat):  # interleaved: all healthy, mixed, all healthy, mixed, ...
            with workdir(f"iso-all-r{r}") as work:
                # All healthy, same size: 10 webhooks, every delivery counted.
                all_runs.append(
                    await daemon_run(work, good, n_events, tag=f"isoall{r}", overrides=overrides)
                )
            with workdir(f"iso-mixed-r{r}") as work:
                mixed_runs.append(
                    await daemon_run(
                        work,
                        mixed_urls,
                        n_events,
                        tag=f"isomix{r}",
                        overrides=overrides,
                        measure=healthy,
                        # A stalled run is reported as such (complete=False), not waited out.
                        deadline=45 if args.quick else 120,
                    )
                )
            with workdir(f"iso-alone-r{r}") as work:
                alone_runs.append(
                    await daemon_run(
                        work,
                        good[:5],
                        n_events // 2,
                        tag=f"isoalone{r}",
                        overrides=overrides,
                        profile=profile_of(args, "alone") if r == 0 else None,
                    )
                )
            with workdir(f"iso-traffic-r{r}") as work:
                same_traffic_runs.append(
                    await daemon_run(
                        work,
                        good[:5],
                        n_events,
                        tag=f"isotraf{r}",
                        overrides=overrides,
                        types=10,
                        profile=profile_of(args, "traffic") if r == 0 else None,
                    )
                )
            with workdir(f"iso-limited-r{r}") as work:
                limited_runs.append(
                    await daemon_run(
                        work,
                        good,
                        n_events,
                        tag=f"isolim{r}",
                        overrides=overrides,
                        measure=healthy,
                        settings=limited,
                        deadline=45 if args.quick else 120,
                        profile=profile_of(args, "limited") if r == 0 else None,
                    )
                )
    ratios = pair_ratios(all_runs, mixed_runs)
    ratio = round(statistics.median(ratios), 3)
    all_healthy, mixed = median_run(all_runs), median_run(mixed_runs)
    limited_ratios = pair_ratios(same_traffic_runs, limited_runs)
    limited_ratio = round(statistics.median(limited_ratios), 3)
    same_traffic, beside_limited = median_run(same_traffic_runs), median_run(limited_runs)
    half_ratios = pair_ratios(alone_runs, limited_runs)
    half_ratio = round(statistics.median(half_ratios), 3)
    alone = median_run(alone_runs)
    complete = all(
        r["complete"] for r in all_runs + mixed_runs + alone_runs + limited_runs + same_traffic_runs
    )
    figures.update(
        all_healthy=all_healthy,
        mixed=mixed,
        all_healthy_runs=all_runs,
        mixed_runs=mixed_runs,
        ratios=ratios,
        ratio=ratio,
        unlimited_alone=alone,
        beside_limited=beside_limited,
        unlimited_alone_runs=alone_runs,
        beside_limited_runs=limited_runs,
        limited_ratios=limited_ratios,
        limited_ratio=limited_ratio,
        unlimited_same_traffic=same_traffic,
        unlimited_same_traffic_runs=same_traffic_runs,
        half_traffic_ratios=half_ratios,
        half_traffic_ratio=half_ratio,
        complete=complete,
        load_after=machine_load(),
    )
    table(
        f"isolation: {n_events} events over 10 webhooks (own type each, round-robin); "
        f"5 black holes, delivery.timeout {timeout}, median of {repeat} "
        f"(load {figures['load_before']})",
        ["run", "measured deliveries", "deliveries/s", "runs/s", "cpu us/deliv"],
        [
            [
                name,
                f"{med['deliveries']}/{med['expected']}",
                med["per_second"],
                csv(r["per_second"] for r in case_runs),
                med["daemon_cpu_us_per_delivery"],
            ]
            for name, med, case_runs in (
                ("10 healthy (all counted)", all_healthy, all_runs),
                ("5 healthy + 5 black holes (healthy counted)", mixed, mixed_runs),
                ("5 unlimited alone, their own events only", alone, alone_runs),
                (
                    f"5 unlimited alone, all {n_events} events (t5-t9 unsubscribed)",
                    same_traffic,
                    same_traffic_runs,
                ),
                (
                    f"5 unlimited + 5 limited to {RATE_LIMIT}/s (unlimited counted)",
                    beside_limited,
                    limited_runs,
                ),
            )
        ],
    )
    print(
        f"  mixed / all healthy, run by run: {', '.join(map(str, ratios))}; "
        f"median {ratio} (target >= 0.9)"
    )
    print(
        f"  unlimited beside rate-limited / unlimited alone, same traffic, run by run: "
        f"{', '.join(map(str, limited_ratios))}; median {limited_ratio} (target >= 0.9)"
    )
    print(
        f"  unlimited beside rate-limited / unlimited alone with half the traffic (their own "
        f"events only), run by run: {', '.join(map(str, half_ratios))}; median {half_ratio}"
    )
    if not complete:
        print("  WARNING: some runs did not complete before their deadline")
    line = last_line(
        "isolation",
        {
            "healthy_per_s": mixed["per_second"],
            "all_healthy_per_s": all_healthy["per_second"],
            "ratio": ratio,
            "limited_ratio": limited_ratio,
            "half_traffic_ratio": half_ratio,
            "timeout": timeout,
            "complete": complete,
            "target_ratio": 0.9,
            "repeat": repeat,
            "ratios": csv(ratios),
            **engine_keys(figures),
        },
    )
    return figures, line
