"""webhookd benchmarks.

    python bench/run.py --scenario throughput|latency|scale|isolation [--quick] [--json FILE]
                        [--repeat N] [--profile FILE]
                        [--engine duckdb|postgresql] [--daemons N]

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
server per invocation (tests/pg.py: initdb in a temp dir, 127.0.0.1, fsync on, since
durability is what is measured; WEBHOOKD_TEST_POSTGRES_URL's server instead if set), gives
every run a fresh schema (dropped after it, then a CHECKPOINT) and stops the server at the
end, also on Ctrl-C or SIGTERM. `--daemons N` starts N daemons with the same settings on that
schema (each its own admin port and log); the producer's ingest requests go round-robin over
their APIs and the status is polled from the first. CPU per delivery is then that of all N
daemons' process trees plus, printed apart and summed, that of the PostgreSQL server (every
postgres process, from /proc; with the share of a core each kind of process kept busy and
commits / WAL per delivery). The baseline stays one bare loop with WORKERS concurrency, whatever
the engine or the number of daemons, so that ratios compare across engines and N. Each
scenario's last line carries `engine=` and `daemons=`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import profile_top
from harness import (
    REPO,
    Api,
    BenchError,
    DaemonProcess,
    MachineCpu,
    Nginx,
    Postgres,
    Receiver,
    code_hash,
    cpu_seconds,
    die_with_parent,
    event_data,
    pyspy,
    python_thread_names,
    run_baseline,
    runqueue_seconds,
    snapshot_code,
    stop_process,
    summary_ms,
    thread_cpu,
    thread_label,
    thread_owners,
)

WORKERS = 64  # delivery.workers default: the baseline uses the same concurrency
PER_WEBHOOK = 8  # delivery.per_webhook_concurrency default
PROFILE_RATE = 250  # py-spy samples per second
PROFILE_GIL = False  # --profile-gil: sample only the thread holding the GIL
INGEST_BATCH = 500
INGEST_CONCURRENCY = 4
POLL = 0.05

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


def batches(n_events: int, n_types: int, tag: str) -> list[bytes]:
    """Pre-encoded POST /v1/events bodies: INGEST_BATCH events each, types round-robin."""
    out = []
    for start in range(0, n_events, INGEST_BATCH):
        events = [
            {"id": f"evt_{tag}_{i:08d}", "type": f"t{i % n_types}", "data": event_data(i)}
            for i in range(start, min(n_events, start + INGEST_BATCH))
        ]
        out.append(json.dumps(events).encode())
    return out


class Profiler:
    """py-spy record attached to a pid and its subprocesses (the store server); SIGINT
    makes it write its output and exit."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = pyspy()
        if exe is None:
            raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out = out
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--format",
                "raw",
                "--threads",
                "--rate",
                str(PROFILE_RATE),
                "--output",
                str(out),
                "--nonblocking",
                *(["--gil"] if PROFILE_GIL else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        time.sleep(0.5)  # let it attach before the load starts
        self.started = time.perf_counter()

    def close(self) -> None:
        seconds = time.perf_counter() - self.started
        stop_process(self.proc, signal.SIGINT, grace=30.0)
        if self.out.exists():
            print(f"\n-- py-spy profile of the daemon ({seconds:.1f}s) in {self.out}:")
            print(profile_top.summarise(self.out, 12, seconds=seconds, rate=PROFILE_RATE))


async def deliver(
    daemon: DaemonProcess | Sequence[DaemonProcess],
    api: Api | Sequence[Api],
    bodies: Sequence[bytes],
    done_count: Callable[[dict[str, Any]], int],
    expected: int,
    *,
    deadline: float,
    poll: float = POLL,
    sink_pids: Sequence[int] = (),
    db: Postgres | None = None,
) -> Figures:
    """Ingest the pre-encoded batches and wait until done_count(/v1/status) reaches expected.

    Several daemons (on one PostgreSQL schema): batch i goes to the API of daemon i mod N
    (round-robin), /v1/status is asked of the first, the delivered-attempts counter is the
    sum of all of theirs, and CPU and memory are summed over their process trees. With `db`
    the server's CPU (every postgres process) is measured too: `db_cpu_us_per_delivery`,
    and `total_cpu_us_per_delivery` = daemons' + database's.

    /v1/status runs GROUP BY queries over the whole queue (tens of ms of database CPU on a
    big one), too dear to ask 20 times a second while measuring. So every `poll` seconds
    this reads the daemon's in-memory counter of delivered attempts from /metrics first,
    and polls /v1/status (every `poll` seconds) only once that counter has risen by the
    number of deliveries expected: the counter is incremented just before an outcome is
    committed, so the status polls that follow find the last commit within a few polls.
    (A daemon without the counter is polled on /v1/status all along, as before.)

    Time runs from the first ingest request sent to the status poll that shows the last
    delivery (the last outcome committed); deliveries/s = (expected - already done) / that
    time. If the deadline passes first, the figures are those of the deliveries done by
    then (a last status poll), marked complete = False.
    """
    group = [daemon] if isinstance(daemon, DaemonProcess) else list(daemon)
    apis = [api] if isinstance(api, Api) else list(api)
    api = apis[0]  # status polls
    before = done_count(await api.status())
    target = expected - before

    async def attempts_delivered() -> float | None:
        counts = [await a.delivered_attempts() for a in apis]
        return None if any(c is None for c in counts) else sum(c or 0.0 for c in counts)

    delivered0 = await attempts_delivered()
    if delivered0 is None:
        print("  note: no webhookd_attempts counter in /metrics: polling /v1/status throughout")
    gate_open = delivered0 is None  # poll /v1/status from now on
    queue = list(bodies)
    ingest_end = 0.0
    status_ms: list[float] = []
    metrics_ms: list[float] = []
    gate_opened = 0.0
    # The daemon and its descendants (the store server): their threads are "store:<name>".
    # Several daemons: each one's threads are prefixed "d<i>:".
    names = [python_thread_names(d.pid) for d in group]
    threads0 = [thread_cpu(d.pid) for d in group]

    def group_cpu(tree: bool = True) -> float:
        return sum(cpu_seconds(d.pid, tree=tree) for d in group)

    def sample_rss() -> None:
        for d in group:
            d.sample_rss()

    cpu0 = group_cpu()  # the daemons and their descendants
    own_cpu0 = group_cpu(tree=False)
    db_cpu0 = db.cpu_seconds() if db is not None else None
    db_kinds0 = db.cpu_by_process() if db is not None else {}
    db_stats0 = await db.stats() if db is not None else {}
    # Time runnable but waiting for a CPU: the daemons, the server, this process (ingest).
    queued0 = (
        sum(runqueue_seconds(d.pid) for d in group),
        db.runqueue_seconds() if db is not None else None,
        runqueue_seconds(os.getpid()),
    )
    watching = asyncio.Event()
    watch = asyncio.create_task(db.watch(watching)) if db is not None else None
    machine = MachineCpu(sink_pids)
    t0 = time.perf_counter()
    sent = 0

    async def producer() -> None:
        nonlocal ingest_end, sent
        while queue:
            body = queue.pop(0)
            target_api = apis[sent % len(apis)]  # round-robin over the daemons
            sent += 1
            for _ in range(50):  # bounded: a 5xx is retried at most 50 times
                status, payload = await target_api.request("POST", "/v1/events", raw=body)
                if status == 202:
                    break
                if status < 500:
                    raise BenchError(f"ingest answered {status}: {payload}")
                await asyncio.sleep(0.05)
            else:
                raise BenchError("ingest kept failing")
        ingest_end = max(ingest_end, time.perf_counter())

    async def poll_status() -> dict[str, Any]:
        s0 = time.perf_counter()
        status = await api.status()
        status_ms.append((time.perf_counter() - s0) * 1000)
        return status

    producers = [asyncio.create_task(producer()) for _ in range(INGEST_CONCURRENCY)]
    end = time.monotonic() + deadline
    last: dict[str, Any] = {}
    finished = 0.0
    timed_out = False
    try:
        while time.monotonic() < end:
            await asyncio.sleep(poll)
            for task in producers:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if not gate_open:
                m0 = time.perf_counter()
                count = await attempts_delivered()
                metrics_ms.append((time.perf_counter() - m0) * 1000)
                sample_rss()
                if count is not None and delivered0 is not None and count - delivered0 < target:
                    continue
                # Every delivery has had its successful attempt (more than that with
                # duplicates): from now on /v1/status, starting with this poll.
                gate_open = True
                gate_opened = time.perf_counter()
            last = await poll_status()
            sample_rss()
            if done_count(last) >= expected:
                finished = time.perf_counter()
                break
        else:
            timed_out = True
            finished = time.perf_counter()
            last = await poll_status()  # what was done by the deadline
            sample_rss()
            gate = "" if gate_open else "; the delivered-attempts counter had not got there"
            print(
                f"  WARNING: {done_count(last) - before} of {target} deliveries done "
                f"after {deadline}s; figures are for those (status: {last.get('by_status')}, "
                f"workers busy {last.get('workers_busy')}{gate})"
            )
        if not timed_out:
            await asyncio.gather(*producers)
    finally:
        for task in producers:
            task.cancel()
        watching.set()
        activity: dict[str, Any] = {}
        if watch is not None:
            with contextlib.suppress(Exception):  # a diagnostic: never fails the run
                activity = await watch
    complete = not timed_out
    done = target if complete else min(target, done_count(last) - before)
    cpu = group_cpu() - cpu0
    own_cpu = group_cpu(tree=False) - own_cpu0
    db_cpu = db.cpu_seconds() if db is not None else None
    db_kinds = db.cpu_by_process() if db is not None else {}
    db_stats = await db.stats() if db is not None else {}
    queued = (
        sum(runqueue_seconds(d.pid) for d in group),
        db.runqueue_seconds() if db is not None else None,
        runqueue_seconds(os.getpid()),
    )
    machine_figures = machine.stop(done)
    seconds = finished - t0
    by_thread: dict[str, float] = {}
    for i, d in enumerate(group):
        owners = thread_owners(d.pid)
        prefix = f"d{i}:" if len(group) > 1 else ""
        for tid, used in thread_cpu(d.pid).items():
            label = prefix + thread_label(tid, d.pid, names[i], owners)
            by_thread[label] = by_thread.get(label, 0.0) + used - threads0[i].get(tid, 0.0)
    extra: Figures = {}
    if len(group) > 1 or db is not None:
        extra["daemons"] = len(group)
    if db is not None:
        per = 1e6 / max(1, done)
        used = None if db_cpu is None or db_cpu0 is None else db_cpu - db_cpu0
        extra["db_cpu_s"] = None if used is None else round(used, 2)
        extra["db_cpu_us_per_delivery"] = None if used is None else round(used * per, 1)
        extra["total_cpu_us_per_delivery"] = None if used is None else round((cpu + used) * per, 1)
        # Share of one core each kind of postgres process kept busy.
        extra["db_core_share"] = {
            k: round((v - db_kinds0.get(k, 0.0)) / seconds, 2)
            for k, v in sorted(db_kinds.items())
            if (v - db_kinds0.get(k, 0.0)) / seconds >= 0.01
        }
        # Seconds runnable but waiting for a CPU during the run (other processes had it).
        extra["cpu_wait_s"] = {
            name: None if a is None or b is None else round(b - a, 2)
            for name, a, b in zip(("daemons", "db", "bench"), queued0, queued, strict=True)
        }
        # The daemons' connections: the mean number in each state (pg_stat_activity).
        extra["db_connections"] = activity.get("connections", {})
        extra["db_per_delivery"] = {
            key: round((db_stats[key] - db_stats0.get(key, 0.0)) / max(1, done), 3)
            for key in ("commits", "wal_records", "wal_bytes", "wal_write", "wal_sync")
            if key in db_stats
        }
    return {
        "deliveries": done,
        "expected": target,
        "complete": complete,
        "seconds": round(seconds, 3),
        "per_second": round(done / seconds, 1),
        "ingest_seconds": round(ingest_end - t0, 3) if ingest_end else None,
        "daemon_cpu_s": round(cpu, 2),  # with its descendants (the store server)
        "children_cpu_s": round(cpu - own_cpu, 2),
        "daemon_cpu_us_per_delivery": round(cpu / max(1, done) * 1e6, 1),
        # Share of one core each thread kept busy: which thread is the bottleneck.
        "thread_core_share": {
            k: round(v / seconds, 2) for k, v in sorted(by_thread.items()) if v / seconds >= 0.01
        },
        # Completion polling: /metrics until the delivered-attempts counter got there, then
        # /v1/status; the status polls made (the last one included) and their mean cost.
        "status_polls": len(status_ms),
        "status_poll_ms_mean": round(statistics.fmean(status_ms), 1) if status_ms else None,
        "metrics_polls": len(metrics_ms),
        "metrics_poll_ms_mean": round(statistics.fmean(metrics_ms), 1) if metrics_ms else None,
        # From the counter showing every delivery attempted to the last commit seen.
        "status_phase_s": round(finished - gate_opened, 3) if gate_opened else None,
        "by_status": {k: v for k, v in last.get("by_status", {}).items() if v},
        "workers_busy_at_end": last.get("workers_busy"),
        **machine_figures,
        **(group[0].memory() if len(group) == 1 else group_memory(group)),
        **extra,
    }


def group_memory(group: Sequence[DaemonProcess]) -> Figures:
    """Memory of several daemons: sums over them (peak: the sum of each one's peak, an upper
    bound of the peak of the sum), and each one's peak."""
    each = [d.memory() for d in group]
    out: Figures = {
        key: round(sum(m.get(key, 0) for m in each), 1)
        for key in ("rss_mb", "peak_rss_mb", "children_rss_mb", "processes", "threads")
    }
    out["peak_rss_mb_each"] = [m.get("peak_rss_mb") for m in each]
    return out


def delivered(status: dict[str, Any]) -> int:
    return int(status.get("by_status", {}).get("delivered", 0))


def delivered_for(webhook_ids: Sequence[str]) -> Callable[[dict[str, Any]], int]:
    def count(status: dict[str, Any]) -> int:
        by_webhook = status.get("by_webhook", {})
        return sum(int(by_webhook.get(w, {}).get("delivered", 0)) for w in webhook_ids)

    return count


async def daemon_run(
    work: Path,
    urls: Sequence[str],
    n_events: int,
    *,
    tag: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    measure: Sequence[int] | None = None,
    deadline: float = 300.0,
    profile: Path | None = None,
    sink_pids: Sequence[int] = (),
    settings: dict[int, dict[str, Any]] | None = None,
    types: int | None = None,
) -> Figures:
    """A fresh daemon (ENGINE.daemons of them on PostgreSQL), one webhook per url (webhook i
    subscribes to type t{i}, with settings[i] of its own), n_events round-robin over the
    types (`types` of them, default one per url: the others have no subscriber); measured
    until the webhooks at indexes `measure` (default all) have delivered everything of
    theirs."""
    n_types = types or len(urls)
    async with daemon_group(work, overrides) as group:
        apis = [Api(d.url) for d in group]
        api = apis[0]
        profilers: list[Profiler] = []
        try:
            own = settings or {}
            ids = [
                await api.create_webhook(url, [f"t{i}"], **own.get(i, {}))
                for i, url in enumerate(urls)
            ]
            picked = list(range(len(urls))) if measure is None else list(measure)
            expected_new = sum(
                len(range(i, n_events, n_types)) for i in picked
            )  # events of type t{i}
            count = delivered_for([ids[i] for i in picked])
            bodies = batches(n_events, n_types, tag)
            if profile is not None:
                for i, d in enumerate(group):
                    out = profile
                    if len(group) > 1:
                        out = profile.with_name(f"{profile.stem}-d{i}{profile.suffix}")
                    profilers.append(Profiler(d.pid, out))
            already = count(await api.status())
            result = await deliver(
                group,
                apis,
                bodies,
                count,
                already + expected_new,
                deadline=deadline,
                sink_pids=sink_pids,
                db=ENGINE.pg,
            )
            result["webhooks"] = len(urls)
            result["events"] = n_events
            errors = logged_errors(group)
            if errors:
                result["daemon_errors"] = errors
            return result
        finally:
            for profiler in profilers:
                profiler.close()
            for a in apis:
                await a.close()


@contextlib.asynccontextmanager
async def daemon_group(
    work: Path, overrides: dict[str, dict[str, Any]] | None = None
) -> AsyncIterator[list[DaemonProcess]]:
    """ENGINE.daemons started daemons with the same settings (`overrides`), stopped at the
    end. PostgreSQL: on a fresh schema, dropped afterwards; several daemons each have their
    own work directory (work/daemon<i>: config, log, admin port read from the log)."""
    sections = {k: dict(v) for k, v in (overrides or {}).items()}
    pg = ENGINE.pg
    schema = None
    if pg is not None:
        schema = pg.new_schema()
        sections.setdefault("database", {}).update(url=pg.url, schema=schema)
    n = ENGINE.daemons
    group = [DaemonProcess(work if n == 1 else work / f"daemon{i}", sections) for i in range(n)]
    try:
        with contextlib.ExitStack() as stack:
            for d in group:  # one after the other: the first one migrates the schema
                stack.enter_context(started(d))
            yield group
    finally:
        if pg is not None and schema is not None:
            with contextlib.suppress(Exception):
                await pg.drop_schema(schema)


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


# -- scenarios -----------------------------------------------------------------------------------


async def throughput(args: argparse.Namespace) -> tuple[Figures, str]:
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
            figures[f"hooks{n_hooks}"] = {"daemon": run, "baseline": base, "ratio": ratio}
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
            "daemon_1_info": info["per_second"],
            "info_slowdown": info_cost,
            "target_ratio": 0.8,
            **engine_keys(figures),
        },
    )
    return figures, line


async def latency(args: argparse.Namespace) -> tuple[Figures, str]:
    rate = args.rate or (200 if args.quick else 500)
    duration = args.duration or (5 if args.quick else 20)
    n = rate * duration
    cap = 1000  # at most this many ingest requests in flight: beyond it a send is skipped
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    failed = skipped = 0
    with workdir("lat") as work, started(Receiver("timestamp")) as receiver:
        async with daemon_group(work) as group:
            # Several daemons: the sends go round-robin over their APIs (256 connections in
            # all), the status is asked of the first.
            apis = [Api(d.url, connections=max(1, 256 // len(group))) for d in group]
            api = apis[0]
            try:
                await api.create_webhook(f"{receiver.url}/hook", ["t0"])
                # Idle first: one event at a time to a daemon with nothing else to do,
                # send -> 202; the next leaves 20 ms after a 202, once its delivery is done.
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
                watch = asyncio.create_task(pg.watch(watching)) if pg is not None else None
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
        "negative_latencies": negatives,
        "latency": summary_ms(lat),
        "end_to_end": summary_ms(e2e),
        "ingest_202": summary_ms(ingest),
        "idle_202": summary_ms(idle),
        "load": machine_load(),
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
    print(
        f"  idle: {idle_202.get('count', 0)} events one at a time, send -> 202: "
        f"p50 {idle_202.get('p50_ms')} ms, p99 {idle_202.get('p99_ms')} ms, "
        f"max {idle_202.get('max_ms')} ms"
    )
    print(
        f"  negative (arrival before the 202, counted as 0): {negatives}; "
        f"missing {figures['missing']}, failed {failed}, skipped {skipped}"
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
            **engine_keys(figures),
        },
    )
    return figures, line


def prefill(db: Path, webhook_id: str, rows: int) -> float:
    """Write `rows` delivered rows into the queue and the log (and their events) directly.

    The daemon must be stopped (DuckDB: one process per file). Returns seconds taken.
    """
    import duckdb

    started_at = time.perf_counter()
    now = datetime.now(UTC).replace(tzinfo=None)
    body = (
        '\'{"data":{"amount":\' || (1000 + i % 9000) || \',"currency":"eur","customer":'
        "\"cus_' || lpad(i::VARCHAR, 12, '0') || '\",\"invoice\":\"in_' || lpad(i::VARCHAR, 10, "
        '\'0\') || \'","lines":3,"paid":true},"id":"evt_pre_\' || lpad(i::VARCHAR, 9, \'0\') || '
        '\'","timestamp":"2026-01-01T00:00:00.000000Z","type":"t0"}\''
    )
    con = duckdb.connect(str(db))
    try:
        con.execute("SET checkpoint_threshold = '1GB'")
        con.execute("BEGIN TRANSACTION")
        con.execute(
            f"""
            INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at,
                                         ingested_at)
            SELECT 'evt_pre_' || lpad(i::VARCHAR, 9, '0'), 't0',
                   '{{"amount":' || (1000 + i % 9000) || '}}', ({body})::BLOB, $now, $now
            FROM range({rows}) t(i)
            """,
            {"now": now},
        )
        con.execute(
            f"""
            INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts,
                retry_base, next_attempt_at, lease_until, body, last_status_code, last_error,
                last_attempt_at, created_at, updated_at)
            SELECT $wid, 'evt_pre_' || lpad(i::VARCHAR, 9, '0'), 'delivered', 1, 0, NULL, NULL,
                   ({body})::BLOB, 204, NULL, $now, $now, $now
            FROM range({rows}) t(i)
            """,
            {"wid": webhook_id, "now": now},
        )
        con.execute(
            f"""
            INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at,
                duration_ms, status_code, error, response_excerpt, outcome)
            SELECT $wid, 'evt_pre_' || lpad(i::VARCHAR, 9, '0'), 1, $now, 1.5, 204, NULL, '',
                   'delivered'
            FROM range({rows}) t(i)
            """,
            {"wid": webhook_id, "now": now},
        )
        con.execute(
            "UPDATE scanner_cursor SET seq = (SELECT max(seq) FROM pipeline_events), "
            "updated_at = $now WHERE name = 'main'",
            {"now": now},
        )
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - started_at


def copy_database(src: Path, dst: Path) -> None:
    """Copy a (stopped) daemon's database file, and its .wal if any, to dst."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + ".wal"))


async def scale(args: argparse.Namespace) -> tuple[Figures, str]:
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
            # First start: schema and the webhook; then prefill with the daemon stopped.
            first = DaemonProcess(work)
            with started(first):
                api = Api(first.url)
                try:
                    webhook_id = await api.create_webhook(url, ["t0"])
                finally:
                    await api.close()
            seconds = prefill(first.db_path, webhook_id, size)
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
                    daemon = DaemonProcess(work)
                    copy_database(db, daemon.db_path)
                    start0 = time.perf_counter()
                    with started(daemon):
                        startup = time.perf_counter() - start0
                        api = Api(daemon.url)
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


def profile_of(args: argparse.Namespace, case: str) -> Path | None:
    """--profile FILE: where the profile of this case's first run goes (FILE-case.EXT)."""
    if args.profile is None:
        return None
    path: Path = args.profile
    return path.with_name(f"{path.stem}-{case}{path.suffix}")


RATE_LIMIT = 10  # deliveries/s of each rate-limited webhook in the isolation scenario


async def isolation(args: argparse.Namespace) -> tuple[Figures, str]:
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


SCENARIOS: dict[str, Callable[[argparse.Namespace], Awaitable[tuple[Figures, str]]]] = {
    "throughput": throughput,
    "latency": latency,
    "scale": scale,
    "isolation": isolation,
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
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
        "FILE-1hook.EXT and FILE-10hook.EXT, and print a summary (bench/profile_top.py); "
        "latency: the whole run to FILE; with several daemons, each to ...-d<i>.EXT; "
        "isolation: the first run of the unlimited-alone (its own events, all events) and "
        "beside-limited cases to FILE-alone.EXT, FILE-traffic.EXT and FILE-limited.EXT",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread that holds the GIL (py-spy --gil)",
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
        "latency only; the bench starts its own throwaway server (tests/pg.py; or the one of "
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
        "--nginx-workers",
        default="auto",
        help="nginx worker_processes (auto: one per core; measured a little faster than 1 here)",
    )
    args = parser.parse_args()
    if args.daemons < 1:
        parser.error("--daemons: at least 1")
    if args.engine == "duckdb" and args.daemons > 1:
        parser.error(
            f"--daemons {args.daemons} needs --engine postgresql: a DuckDB file is opened by "
            "one process only, so several daemons cannot share a queue on it"
        )
    if args.engine == "postgresql" and args.scenario not in ("throughput", "latency"):
        parser.error(
            f"--engine postgresql: the {args.scenario} scenario runs on DuckDB only "
            "(throughput and latency run on both engines)"
        )

    def terminate(signum: int, _: object) -> None:
        # Unwind normally so that every `finally` stops the processes it started.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    global PROFILE_GIL
    PROFILE_GIL = args.profile_gil
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
        figures, line = run_loop(SCENARIOS[args.scenario](args))
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
    figures["wall_s"] = round(time.perf_counter() - started_at, 1)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"  ({args.scenario} took {figures['wall_s']}s)")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
