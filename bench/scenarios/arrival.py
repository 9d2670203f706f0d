"""arrival: the latency scenario at 100 single events/s (10 s; 5 s with --quick), the rate
at which issue 26 compares send -> arrival with its floor (POST + commit + POST). At the
latency scenario's 500/s this machine is saturated and the figure measures a queue.

A p99 of 1,000 events is its 10th slowest, and one stall of the machine moves it: single
runs of the same code gave ratios from 1.65 to 3.8 in one sitting. `--repeat N` (default
1) runs the scenario N times, each with its own floor, and reports every run's two ratios
and their medians (the last line then carries the medians)."""

from __future__ import annotations

import argparse
import statistics

from bench.common import Figures, engine_keys, last_line
from bench.scenarios import latency

RATIOS = ("idle_202_ratio", "send_arrival_ratio")


def medians(runs: list[Figures]) -> dict[str, float | None]:
    """The median of each ratio over the runs that have it (None where none has)."""
    out: dict[str, float | None] = {}
    for key in RATIOS:
        values = [r["floor"][key] for r in runs if r["floor"].get(key) is not None]
        out[key] = round(statistics.median(values), 2) if values else None
    return out


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    args.rate = args.rate or 100
    args.duration = args.duration or (5 if args.quick else 10)
    repeat = args.repeat or 1
    runs: list[Figures] = []
    line = ""
    for _ in range(repeat):
        figures, line = await latency.run(args)
        runs.append(figures)
    if repeat == 1:
        return runs[0], line.replace("latency:", "arrival:", 1)
    middle = medians(runs)
    for key in RATIOS:
        print(f"  {key}, run by run: {[r['floor'].get(key) for r in runs]}; median {middle[key]}")
    keys = {
        "repeat": repeat,
        **{f"{key}s": ",".join(str(r["floor"].get(key)) for r in runs) for key in RATIOS},
        **middle,
        **engine_keys({}),
    }
    return {"runs": runs, "repeat": repeat, **middle}, last_line("arrival", keys)
