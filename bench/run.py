"""webhookd benchmarks.

    python -m bench.run --scenario throughput|latency|scale|isolation|client [--quick] [--json FILE]
                        [--repeat N] [--profile FILE]
                        [--engine duckdb|postgresql] [--daemons N]

Run from the repository's root. Each scenario is a module of bench/scenarios/; this module
parses the options, starts what every scenario shares (the code snapshot, PostgreSQL) and
runs one.

Each scenario prints a table and, as its LAST line, `NAME: key=value ...`. `--json FILE`
writes the figures. Everything runs on 127.0.0.1: nginx as the sink (`bash bench/setup.sh`
installs it), the daemon as a subprocess (`python -m webhookd run`), the baseline and the
receivers as subprocesses. Targets:
throughput ratio >= 0.8, latency p99 <= 25 ms, scale ratio >= 0.85 with RSS <= 250 MB,
isolation >= 0.9.

Single runs swing by 20-30 % on a shared machine, so `throughput`, `scale` and `isolation`
run each case `--repeat N` times (default 3, 1 with --quick) and report medians. `scale`
and `isolation` interleave their two cases (A, B, A, B, ...), take the ratio B/A of each
repetition and report the median of those as `ratio` (the per-repetition ones as `ratios`).
`scale` prefills each database once and starts every run from a copy of it; its peak RSS
is the largest over the runs of the big case.

Engines. DuckDB is the default (one daemon, its own file per run). `--engine postgresql`
(throughput and latency) runs the daemons on PostgreSQL: the bench starts one throwaway
server per invocation (the test kit's, tests/kit/pg.py: initdb in a temp dir, 127.0.0.1,
fsync on, since durability is what is measured; WEBHOOKD_TEST_POSTGRES_URL's server instead
if set), gives every run a fresh schema (dropped after it, then a CHECKPOINT) and stops the
server at the end, also on Ctrl-C or SIGTERM. `--daemons N` starts N daemons with the same
settings on that schema (each its own admin port and log); the producer's ingest requests go
round-robin over their APIs and the status is polled from the first. CPU per delivery is
then that of all N daemons' process trees plus, printed apart and summed, that of the
PostgreSQL server (every postgres process, from /proc; with the share of a core each kind of
process kept busy and commits / WAL per delivery). The baseline stays one bare loop with
WORKERS concurrency, whatever the engine or the number of daemons, so that ratios compare
across engines and N. Each scenario's last line carries `engine=` and `daemons=`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import signal
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import daemons, measure
from bench.code import REPO, code_hash, snapshot_code
from bench.common import ENGINE, started
from bench.daemons import SETTINGS
from bench.pgserver import Postgres

SCENARIOS = (
    "arrival",
    "client",
    "isolation",
    "latency",
    "scale",
    "soak",
    "throughput",
)  # modules of bench/scenarios/


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, required=True)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="throughput, scale, isolation: runs per case, interleaved; medians are reported "
        "(scale, isolation: the median of the per-repetition ratios) (default 1 quick, 3 full)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="throughput: py-spy record (raw, --threads) the first run of each case to "
        "FILE-1hook.EXT and FILE-10hook.EXT, and print a summary (bench.profile_top); "
        "latency: the whole run to FILE; with several daemons, each to ...-d<i>.EXT; "
        "isolation: the first run of the unlimited-alone (its own events, all events) and "
        "beside-limited cases to FILE-alone.EXT, FILE-traffic.EXT and FILE-limited.EXT",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread that holds the GIL (py-spy --gil)",
    )
    parser.add_argument(
        "--posts",
        type=int,
        default=0,
        help="client: POSTs per arm and run (default 20,000; 5,000 with --quick)",
    )
    parser.add_argument("--rate", type=int, default=0, help="latency: events/s (200 / 500)")
    parser.add_argument("--duration", type=int, default=0, help="latency: seconds (5 / 20)")
    parser.add_argument(
        "--code",
        type=Path,
        help="run the daemon from this directory's webhookd/ (a saved copy) instead",
    )
    parser.add_argument(
        "--live-code",
        action="store_true",
        help="run the daemon from the working tree, not from a copy of webhookd/ taken at start",
    )
    parser.add_argument(
        "--engine",
        choices=("duckdb", "postgresql"),
        default="duckdb",
        help="storage engine of the daemons (default duckdb). postgresql: throughput and "
        "latency only; the bench starts its own throwaway server (the test kit's; or the one of "
        "WEBHOOKD_TEST_POSTGRES_URL) once, a fresh schema per run, and stops it at the end",
    )
    parser.add_argument(
        "--daemons",
        type=int,
        default=1,
        help="daemon processes sharing one PostgreSQL schema (--engine postgresql only; "
        "default 1): ingest goes round-robin over their APIs",
    )
    parser.add_argument(
        "--otlp-endpoint",
        help="the daemons export spans to this OTLP/HTTP receiver (tracing.otlp_endpoint; "
        "python -m bench.otlp_sink serves one on loopback): the cost of tracing",
    )
    parser.add_argument(
        "--nginx-workers",
        default="auto",
        help="nginx worker_processes (auto: one per core; measured a little faster than 1 here)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting of every daemon of the run, as in webhookd.toml (a TOML value, or "
        "a bare string), e.g. --set database.memory_limit=256MB",
    )
    args = parser.parse_args()
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not (section and name and value):
            parser.error(f"--set {item!r}: SECTION.KEY=VALUE")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        SETTINGS.setdefault(section, {})[name] = parsed
    daemons.OTLP_ENDPOINT = args.otlp_endpoint
    if args.daemons < 1:
        parser.error("--daemons: at least 1")
    if args.engine == "duckdb" and args.daemons > 1:
        parser.error(
            f"--daemons {args.daemons} needs --engine postgresql: a DuckDB file is opened by "
            "one process only, so several daemons cannot share a queue on it"
        )
    if args.engine == "postgresql" and args.scenario not in ("throughput", "latency", "arrival"):
        parser.error(
            f"--engine postgresql: the {args.scenario} scenario runs on DuckDB only "
            "(throughput and latency run on both engines)"
        )

    def terminate(signum: int, _: object) -> None:
        # Unwind normally so that every `finally` stops the processes it started.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    measure.PROFILE_GIL = args.profile_gil
    started_at = time.perf_counter()
    try:
        import uvloop

        run_loop: Callable[[Any], Any] = uvloop.run
    except ImportError:  # pragma: no cover
        run_loop = asyncio.run
    with contextlib.ExitStack() as stack:
        code = code_hash(REPO) if args.live_code else stack.enter_context(snapshot_code(args.code))
        ENGINE.name, ENGINE.daemons = args.engine, args.daemons
        if args.engine == "postgresql":
            # Stopped when the stack unwinds: at the end, on an error, Ctrl-C or SIGTERM.
            ENGINE.pg = stack.enter_context(started(Postgres()))
            where = "external, WEBHOOKD_TEST_POSTGRES_URL" if ENGINE.pg.external else "own"
            cpu = "" if ENGINE.pg.postmaster else "; its CPU cannot be read here"
            print(f"  PostgreSQL server ({where}) on {ENGINE.pg.url}{cpu}")
        scenario = importlib.import_module(f"bench.scenarios.{args.scenario}")
        figures, line = run_loop(scenario.run(args))
    figures["code"] = code
    if args.code is None and code_hash(REPO) != code:
        print(
            f"  note: webhookd/ changed while this ran; the figures are for the code as it "
            f"was at the start (digest {code})"
        )
    figures["scenario"] = args.scenario
    figures["quick"] = args.quick
    figures["engine"] = args.engine
    figures["daemons"] = args.daemons
    figures["settings"] = SETTINGS
    figures["wall_s"] = round(time.perf_counter() - started_at, 1)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"  ({args.scenario} took {figures['wall_s']}s)")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
