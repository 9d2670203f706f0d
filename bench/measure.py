"""Measured runs of daemons: ingest, wait for the deliveries, and read what they cost
(time, CPU of every process and thread, memory; on PostgreSQL the server's share), with a
py-spy profile on request."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from bench import profile_top
from bench.code import BenchError
from bench.common import ENGINE, Figures, delivered_for, logged_errors, started
from bench.daemons import BenchDaemon, create_webhook
from bench.daemons import api as bench_api
from bench.events import batches
from bench.pgserver import Postgres
from bench.procfs import (
    MachineCpu,
    cpu_seconds,
    pyspy,
    python_thread_names,
    runqueue_seconds,
    thread_cpu,
    thread_label,
    thread_owners,
)
from tests.kit.api import Api
from tests.kit.procs import die_with_parent, stop_process

PROFILE_RATE = 250  # py-spy samples per second
PROFILE_GIL = False  # --profile-gil: sample only the thread holding the GIL

INGEST_CONCURRENCY = 4
POLL = 0.05


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
    daemon: BenchDaemon | Sequence[BenchDaemon],
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
    group = [daemon] if isinstance(daemon, BenchDaemon) else list(daemon)
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


def group_memory(group: Sequence[BenchDaemon]) -> Figures:
    """Memory of several daemons: sums over them (peak: the sum of each one's peak, an upper
    bound of the peak of the sum), and each one's peak."""
    each = [d.memory() for d in group]
    out: Figures = {
        key: round(sum(m.get(key, 0) for m in each), 1)
        for key in ("rss_mb", "peak_rss_mb", "children_rss_mb", "processes", "threads")
    }
    out["peak_rss_mb_each"] = [m.get("peak_rss_mb") for m in each]
    return out


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
        apis = [bench_api(d.url) for d in group]
        api = apis[0]
        profilers: list[Profiler] = []
        try:
            own = settings or {}
            ids = [
                await create_webhook(api, url, [f"t{i}"], **own.get(i, {}))
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
            before = await api.status()
            already = count(before)
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
            result.update(writer_per_delivery(before, await api.status(), result))
            errors = logged_errors(group)
            if errors:
                result["daemon_errors"] = errors
            return result
        finally:
            for profiler in profilers:
                profiler.close()
            for a in apis:
                await a.close()


def writer_per_delivery(before: Figures, after: Figures, run: Figures) -> Figures:
    """The store's transactions and operations per delivery over the run (one daemon's:
    the first's, with several), from /v1/status `writer`."""
    done = run.get("delivered") or run.get("deliveries")
    old, new = before.get("writer") or {}, after.get("writer") or {}
    if not done or "transactions" not in new:
        return {}
    return {
        f"writer_{key}_per_delivery": round((new[key] - old.get(key, 0)) / done, 3)
        for key in ("transactions", "operations")
        if key in new
    }


@contextlib.asynccontextmanager
async def daemon_group(
    work: Path, overrides: dict[str, dict[str, Any]] | None = None
) -> AsyncIterator[list[BenchDaemon]]:
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
    group = [BenchDaemon(work if n == 1 else work / f"daemon{i}", sections) for i in range(n)]
    try:
        with contextlib.ExitStack() as stack:
            for d in group:  # one after the other: the first one migrates the schema
                stack.enter_context(started(d))
            yield group
    finally:
        if pg is not None and schema is not None:
            with contextlib.suppress(Exception):
                await pg.drop_schema(schema)
