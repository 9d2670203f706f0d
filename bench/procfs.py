"""What /proc says about the bench's processes: CPU, time waiting for a CPU, memory,
threads and their Python names (py-spy), and percentiles of what was timed."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) and thread count of a live process, from /proc."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


# -- a process and its descendants (the daemon starts the store server as a child) ----------


def descendants(pid: int) -> list[int]:
    """Live descendants of pid (children, their children, ...), parents before children.

    Read from /proc/<pid>/task/<tid>/children (a child is listed under the thread that
    started it); processes that vanish while being read are skipped. [] if pid is gone.
    """
    out: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    todo.append(child)
    return out


def process_tree(pid: int) -> list[int]:
    """pid followed by its live descendants."""
    return [pid, *descendants(pid)]


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


# What a descendant's threads are labelled with ("store:MainThread"), by a word of its
# command line; other descendants get "pid<N>".
PROCESS_LABELS = {"webhookd.store.": "store"}  # the DuckDB database process


def process_label(pid: int, args: Sequence[str] | None = None) -> str:
    """A short name for a descendant of the daemon, from its command line."""
    text = " ".join(cmdline(pid) if args is None else args)
    for key, label in PROCESS_LABELS.items():
        if key in text:
            return label
    return f"pid{pid}"


def _stat_fields(path: str) -> list[str]:
    return Path(path).read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds used so far by a live process (all its threads).

    With tree (the default) also by its live descendants, and by the children that any of
    them has already reaped (cutime + cstime): a child that exits and is waited for keeps
    counting, in its parent's figures. tree=False: pid's own threads only.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(f"/proc/{proc}/stat")
            total += int(fields[11]) + int(fields[12])
            if tree:
                total += int(fields[13]) + int(fields[14])
    return total / ticks


def runqueue_seconds(pid: int, *, tree: bool = True) -> float:
    """Seconds the threads of a live process (and, with tree, of its live descendants)
    have spent runnable but waiting for a CPU (the second field of
    /proc/<pid>/task/<tid>/schedstat): time lost to other processes on the machine, which
    neither a profile nor CPU time shows. Threads that have exited are not counted."""
    total = 0
    for proc in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{proc}/task"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    total += int(Path(f"/proc/{proc}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


class MachineCpu:
    """Cores kept busy, machine-wide, between start and stop (/proc/stat): whether a run
    was limited by the machine's CPU rather than by waiting."""

    def __init__(self, sink_pids: Sequence[int] = ()) -> None:
        self._sink_pids = list(sink_pids)
        self._start = self._read()
        self._sink0 = self._sink()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def _sink(self) -> float:
        return sum(cpu_seconds(pid, tree=False) for pid in self._sink_pids)

    def stop(self, requests: int) -> dict[str, float]:
        busy, total = (b - a for a, b in zip(self._start, self._read(), strict=True))
        cores = os.cpu_count() or 1
        figures = {"machine_cores_busy": round(busy / max(1, total) * cores, 2)}
        if self._sink_pids:
            figures["sink_cpu_us_per_post"] = round(
                (self._sink() - self._sink0) / max(1, requests) * 1e6, 1
            )
        return figures


def thread_cpu(pid: int, *, tree: bool = True) -> dict[int, float]:
    """CPU seconds per thread (by native thread id) of a live process and, with tree (the
    default), of its live descendants: thread ids are unique across processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for proc in process_tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{proc}/task"):
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = _stat_fields(f"/proc/{proc}/task/{tid}/stat")
                    out[int(tid)] = (int(stat[11]) + int(stat[12])) / ticks
    return out


def thread_owners(pid: int) -> dict[int, int]:
    """Native thread id -> the pid of its process, for pid and its live descendants."""
    out: dict[int, int] = {}
    for proc in process_tree(pid):
        with contextlib.suppress(OSError):
            out.update((int(tid), proc) for tid in os.listdir(f"/proc/{proc}/task"))
    return out


def tree_rss_kb(pid: int) -> tuple[int, int, int]:
    """(summed VmRSS in kB, largest single VmHWM in kB, summed thread count) of pid and its
    live descendants. Shared pages (libpython, ...) count once per process, as in `ps`."""
    rss = hwm = threads = 0
    for proc in process_tree(pid):
        status = proc_status(proc)
        rss += status.get("VmRSS", 0)
        hwm = max(hwm, status.get("VmHWM", 0))
        threads += status.get("Threads", 0)
    return rss, hwm, threads


# `Thread 123 (active+gil): "name"`: the state may be idle, active, active+gil, ...
_PYSPY_THREAD = re.compile(r'^Thread (?:0x[0-9a-fA-F]+|(\d+)) \([^)]*\): "(.*)"', re.M)


def pyspy() -> str | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return exe if Path(exe).exists() else None


def _pyspy_dump_names(exe: str, pid: int) -> dict[int, str]:
    try:
        out = subprocess.run(
            [exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(m.group(1)): m.group(2) for m in _PYSPY_THREAD.finditer(out) if m.group(1)}


def python_thread_names(pid: int, *, tree: bool = True) -> dict[int, str]:
    """Native thread id -> Python thread name, from `py-spy dump` (empty without py-spy).

    With tree (the default) each live descendant is dumped too and its threads are named
    "<label>:<name>" (label from process_label: "store:MainThread", "store:webhookd-writer").
    """
    exe = pyspy()
    if exe is None:
        return {}
    names = _pyspy_dump_names(exe, pid)
    for child in descendants(pid) if tree else []:
        label = process_label(child)
        names.update(
            (tid, f"{label}:{name}") for tid, name in _pyspy_dump_names(exe, child).items()
        )
    return names


def thread_label(tid: int, pid: int, names: Mapping[int, str], owners: Mapping[int, int]) -> str:
    """What to call thread tid of the process tree rooted at pid (the daemon): its Python
    name (python_thread_names), else "MainThread" for a process's main thread, else a native
    thread; threads of descendants are prefixed "<label>:" (process_label)."""
    if tid in names:
        return names[tid]
    owner = owners.get(tid, pid)
    prefix = "" if owner == pid else process_label(owner) + ":"
    if tid == owner:
        return prefix + "MainThread"
    if names:
        return prefix + "native (DuckDB, libuv)"
    return prefix + "other threads (install py-spy to name them)"


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max / mean in milliseconds of values given in seconds."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p90_ms": round(percentile(values, 90) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }
