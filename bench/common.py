"""What every scenario shares: the engine the daemons run on, work directories, medians
and ratios of repeated runs, and the tables and last line a scenario prints."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pgserver import Postgres
from tests.kit.daemon import DaemonProcess

WORKERS = 64  # delivery.workers default: the baseline uses the same concurrency
PER_WEBHOOK = 8  # delivery.per_webhook_concurrency default

Figures = dict[str, Any]


@dataclass
class Engine:
    """Where the daemons of a run keep their data (--engine, --daemons).

    duckdb: one daemon, its own file in the run's work directory. postgresql: `daemons`
    daemons with the same settings on a fresh schema of the bench's own server (`pg`),
    started once per bench invocation.
    """

    name: str = "duckdb"
    daemons: int = 1
    pg: Postgres | None = None


ENGINE = Engine()


# -- shared pieces -----------------------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"webhookd-bench-{prefix}-"))
    try:
        yield path
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def started(thing: Any) -> Iterator[Any]:
    """thing.start() now, thing.close() whatever happens."""
    try:
        yield thing.start()
    finally:
        thing.close()


def machine_load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f}/{five:.2f}"


def delivered(status: dict[str, Any]) -> int:
    return int(status.get("by_status", {}).get("delivered", 0))


def delivered_for(webhook_ids: Sequence[str]) -> Callable[[dict[str, Any]], int]:
    def count(status: dict[str, Any]) -> int:
        by_webhook = status.get("by_webhook", {})
        return sum(int(by_webhook.get(w, {}).get("delivered", 0)) for w in webhook_ids)

    return count


def logged_errors(group: Sequence[DaemonProcess]) -> int:
    """Error lines the daemons logged so far, with a warning naming the first: a run whose
    daemons fail (a broken scan, a lost database) shows as such, not as a slow run."""
    errors = [record for d in group for record in d.errors()]
    if errors:
        first = errors[0]
        print(
            f"  WARNING: the daemon(s) logged {len(errors)} error(s); first: "
            f"{first.get('event')}: {str(first.get('error', ''))[:200]}"
        )
    return len(errors)


def median_run(runs: list[Figures]) -> Figures:
    ordered = sorted(runs, key=lambda r: r["per_second"])
    chosen = dict(ordered[len(ordered) // 2])
    if len(runs) > 1:
        chosen["all_per_second"] = [r["per_second"] for r in runs]
    return chosen


def repeats(args: argparse.Namespace) -> int:
    """--repeat, or its default: 1 with --quick, 3 otherwise."""
    return args.repeat or (1 if args.quick else 3)


def pair_ratios(a_runs: Sequence[Figures], b_runs: Sequence[Figures]) -> list[float]:
    """B/A of each repetition (the runs interleaved A, B, A, B, ...)."""
    return [
        round(b["per_second"] / a["per_second"], 3) if a["per_second"] else 0.0
        for a, b in zip(a_runs, b_runs, strict=True)
    ]


def csv(values: Iterable[Any]) -> str:
    """A list as one key=value token: comma-separated, no spaces."""
    return ",".join(str(v) for v in values)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n== {title}")
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def last_line(name: str, figures: dict[str, Any]) -> str:
    return f"{name}: " + " ".join(f"{k}={v}" for k, v in figures.items())


def connections(run: Figures, top: int = 8) -> str:
    """The commonest states of the daemons' database connections (pg_stat_activity)."""
    items = list(run.get("db_connections", {}).items())
    return ", ".join(f"[{k}] {v}" for k, v in items[:top] if v >= 0.05) or "-"


def engine_keys(figures: Figures) -> Figures:
    """engine= and daemons= for a scenario's last line; on PostgreSQL also the CPU per
    delivery of the daemons, of the database server and both (the medians of the 10-webhook
    case for throughput)."""
    keys: Figures = {"engine": ENGINE.name, "daemons": ENGINE.daemons}
    run = figures.get("hooks10", {}).get("daemon")
    if ENGINE.pg is not None and run is not None:
        keys.update(
            daemon_cpu_us_10=run["daemon_cpu_us_per_delivery"],
            db_cpu_us_10=run.get("db_cpu_us_per_delivery"),
            total_cpu_us_10=run.get("total_cpu_us_per_delivery"),
        )
    return keys


def profile_of(args: argparse.Namespace, case: str) -> Path | None:
    """--profile FILE: where the profile of this case's first run goes (FILE-case.EXT)."""
    if args.profile is None:
        return None
    path: Path = args.profile
    return path.with_name(f"{path.stem}-{case}{path.suffix}")
