"""arrival: the latency scenario at 100 single events/s (10 s; 5 s with --quick), the rate
at which issue 26 compares send -> arrival with its floor (POST + commit + POST). At the
latency scenario's 500/s this machine is saturated and the figure measures a queue."""

from __future__ import annotations

import argparse

from bench.common import Figures
from bench.scenarios import latency


async def run(args: argparse.Namespace) -> tuple[Figures, str]:
    args.rate = args.rate or 100
    args.duration = args.duration or (5 if args.quick else 10)
    figures, line = await latency.run(args)
    return figures, line.replace("latency:", "arrival:", 1)
