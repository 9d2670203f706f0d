"""Bench plumbing: the nginx sink, the daemon as a subprocess, the baseline, receivers, RSS.

Everything listens on and talks to 127.0.0.1 only. Every process started here is stopped
by its owner's ``close()`` (called from ``finally`` / ``ExitStack``), killed if it does not
stop in time, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PYTHON = sys.executable
TOKEN = "bench-admin-token-" + os.urandom(8).hex()


class BenchError(RuntimeError):
    """A benchmark could not run (a process did not start, a deadline passed)."""


# The daemon and the baseline import webhookd from here: a snapshot taken when the bench
# starts (see snapshot_code), so that edits made to the tree while a scenario runs do not
# mix two versions of the code in one set of figures. None: the working tree itself.
CODE_DIR: Path | None = None


def code_hash(root: Path) -> str:
    """A short digest of webhookd/ under root (sources and SQL, not caches)."""
    digest = hashlib.sha256()
    package = root / "webhookd"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def snapshot_code(existing: Path | None = None) -> Iterator[str]:
    """Run every subprocess on a copy of webhookd/ taken now (or on `existing`, a directory
    that holds a webhookd/ package, e.g. an older copy to compare with); yields its hash."""
    global CODE_DIR
    if existing is not None:
        if not (existing / "webhookd" / "__init__.py").is_file():
            raise BenchError(f"{existing} holds no webhookd/ package")
        CODE_DIR = existing.resolve()
        try:
            yield code_hash(CODE_DIR)
        finally:
            CODE_DIR = None
        return
    snap = Path(tempfile.mkdtemp(prefix="webhookd-bench-code-"))
    try:
        shutil.copytree(
            REPO / "webhookd", snap / "webhookd", ignore=shutil.ignore_patterns("__pycache__")
        )
        CODE_DIR = snap
        yield code_hash(snap)
    finally:
        CODE_DIR = None
        shutil.rmtree(snap, ignore_errors=True)


def _code_env(env: dict[str, str]) -> dict[str, str]:
    if CODE_DIR is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(CODE_DIR), env.get("PYTHONPATH", "")) if p
        )
    return env


# -- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[Any] | None, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise BenchError(f"nothing listening on 127.0.0.1:{port} after {deadline}s")


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` if the bench dies without cleaning up (Linux)."""

    def set_pdeathsig() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG

    return set_pdeathsig


def stop_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, grace: float = 10.0
) -> int | None:
    """Signal the process, wait up to `grace`, then kill it. Only this process, by its id."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
    return proc.returncode


def to_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    return tomli_w.dumps(sections)


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
PROCESS_LABELS = {"webhookd.store.duckdb.server": "store"}


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
    exe = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
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


# -- events as the daemon stores them ---------------------------------------------------------


def event_data(i: int) -> dict[str, Any]:
    """The `data` of bench event i: makes a canonical body of about 200 bytes."""
    return {
        "invoice": f"in_{i:010d}",
        "customer": "cus_" + format(i * 2654435761 % 16**12, "012x"),
        "amount": 1000 + i % 9000,
        "currency": "eur",
        "paid": True,
        "lines": 1 + i % 7,
    }


def canonical_body(event_id: str, event_type: str, data: Mapping[str, Any]) -> bytes:
    """Byte for byte what the daemon stores and sends (webhookd.events builds it)."""
    from webhookd.events import parse_event

    raw = {"id": event_id, "type": event_type, "data": dict(data)}
    return parse_event(raw, 0, datetime.now(UTC)).body


# -- nginx, the sink ---------------------------------------------------------------------------

NGINX_CONF = """\
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    # Bodies of webhooks are small: keep them in memory; `return` discards them.
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 204; }}
    }}
}}
"""


class Nginx:
    """An nginx of our own: own config, prefix and port in a temp dir; `return 204` to all."""

    def __init__(self, workers: str | int = 1) -> None:
        self.workers = workers
        self.dir = Path(tempfile.mkdtemp(prefix="webhookd-bench-nginx-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise BenchError("nginx is not installed: run `bash bench/setup.sh`")
        (self.dir / "logs").mkdir(exist_ok=True)
        self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=self.workers, dir=self.dir, port=self.port))
        self.proc = subprocess.Popen(
            [exe, "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr.log").open("wb"),
            preexec_fn=die_with_parent(signal.SIGTERM),  # nginx: fast shutdown, workers too
        )
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.close()
            raise
        return self

    def pids(self) -> list[int]:
        """The master and its workers (for CPU accounting)."""
        if self.proc is None:
            return []
        pids = [self.proc.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            pids.extend(int(p) for p in children.split())
        return pids

    def close(self) -> None:
        # SIGQUIT is nginx's graceful stop; the master takes its workers with it.
        stop_process(self.proc, signal.SIGQUIT, grace=5.0)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


# -- helper servers in their own processes (bench/receivers.py) --------------------------------


class Receiver:
    """bench/receivers.py in a subprocess: `timestamp` (records arrivals) or `blackhole`."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [PYTHON, str(BENCH / "receivers.py"), self.mode, str(self.port)],
            stdout=subprocess.DEVNULL,
            cwd=REPO,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
        try:
            wait_port(self.port, self.proc)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        stop_process(self.proc, signal.SIGTERM, grace=5.0)
        self.proc = None


# -- the baseline: a bare uvloop + aiohttp loop in its own process ------------------------------


def run_baseline(
    urls: Sequence[str],
    posts: int,
    workers: int,
    *,
    timeout: float = 300.0,
    sink_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """Run bench/baseline.py in a subprocess; its JSON result (posts, seconds, per_second),
    with the cores the machine kept busy meanwhile and the sink's CPU per POST."""
    cmd = [
        PYTHON,
        str(BENCH / "baseline.py"),
        "--posts",
        str(posts),
        "--workers",
        str(workers),
        *[arg for url in urls for arg in ("--url", url)],
    ]
    machine = MachineCpu(sink_pids)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=_code_env(dict(os.environ)),
        preexec_fn=die_with_parent(signal.SIGKILL),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        cpu = machine.stop(posts)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGKILL, grace=1.0)
        raise BenchError(f"the baseline did not finish {posts} POSTs in {timeout}s") from None
    finally:
        stop_process(proc, signal.SIGKILL, grace=1.0)
    if proc.returncode != 0:
        raise BenchError(f"baseline failed ({proc.returncode}): {err.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    if result["errors"]:
        raise BenchError(f"the baseline saw {result['errors']} failed POSTs: is the sink up?")
    # Includes the subprocess's start-up and request building, so a little low.
    result.update(cpu)
    return result


# -- the daemon ----------------------------------------------------------------------------------


def daemon_sections(workdir: Path, **overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Bench settings: the defaults of webhookd except where the bench needs otherwise."""
    token_file = workdir / "admin.token"
    token_file.write_text(TOKEN + "\n")
    sections: dict[str, dict[str, Any]] = {
        "database": {"path": str(workdir / "webhookd.duckdb")},
        "admin": {"listen": "127.0.0.1:0", "token_file": str(token_file)},
        "delivery": {"allow_private_destinations": True},
        # Delivered rows stay in the queue for the whole run (the scale scenario prefills them).
        "retention": {"delivered_ttl": "1d"},
        "shutdown": {"grace": "2s"},
        "logging": {"format": "json", "level": "warning"},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    if "url" in sections["database"]:  # PostgreSQL: no DuckDB file (setting both is an error)
        sections["database"].pop("path", None)
    return sections


@dataclass
class DaemonProcess:
    """`python -m webhookd run` as a subprocess, its stdout in a log file.

    The admin port (listen = 127.0.0.1:0) is learnt from the "webhookd ready" log line, or,
    at log levels above info where that line is not written, from the sd_notify STATUS the
    daemon sends to a NOTIFY_SOCKET of ours.
    """

    workdir: Path
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    _notify: socket.socket | None = None
    rss_samples_kb: list[int] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workdir / "webhookd.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    @property
    def db_path(self) -> Path:
        return self.workdir / "webhookd.duckdb"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, deadline: float = 60.0) -> DaemonProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(to_toml(daemon_sections(self.workdir, **self.overrides)))
        notify_path = self.workdir / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        self._notify.setblocking(False)
        # The bench's settings come from its TOML file only: WEBHOOKD_* overrides in the
        # environment are dropped.
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}
        env.update({"NOTIFY_SOCKET": str(notify_path), "PYTHONUNBUFFERED": "0"})
        env.pop("WATCHDOG_USEC", None)
        _code_env(env)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "webhookd", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=CODE_DIR or REPO,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        try:
            self.url = self._wait_ready(offset, deadline)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_ready(self, offset: int, deadline: float) -> str:
        assert self.proc is not None and self._notify is not None
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.suppress(BlockingIOError):
                for _ in range(100):  # the datagrams queued so far
                    message = self._notify.recv(4096).decode(errors="replace")
                    for field_ in message.splitlines():
                        if field_.startswith("STATUS=serving on "):
                            return "http://" + field_.removeprefix("STATUS=serving on ").strip()
            for record in self.log_lines(offset):
                if record.get("event") == "webhookd ready":
                    return "http://" + str(record["listen"])
            if self.proc.poll() is not None:
                raise BenchError(f"daemon exited {self.proc.returncode}: {self.output(offset)}")
            time.sleep(0.02)
        raise BenchError(f"daemon not ready in {deadline}s: {self.output(offset)}")

    def output(self, offset: int = 0) -> str:
        try:
            return self.log_path.read_text(errors="replace")[offset:]
        except OSError:
            return ""

    def log_lines(self, offset: int = 0) -> list[dict[str, Any]]:
        lines = []
        for raw in self.output(offset).splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    def errors(self, offset: int = 0) -> list[dict[str, Any]]:
        """The log lines at level error or above (from byte `offset` of the log)."""
        return [r for r in self.log_lines(offset) if r.get("level") in ("error", "critical")]

    def sample_rss(self) -> None:
        """Record the RSS of the daemon plus its live descendants (the store server) now."""
        if self.proc is not None and self.proc.poll() is None:
            rss, _, _ = tree_rss_kb(self.proc.pid)
            if rss:
                self.rss_samples_kb.append(rss)

    def memory(self) -> dict[str, float]:
        """Current and peak RSS of the live daemon plus its descendants, in MB.

        The peak is the largest sum over the processes seen by sample_rss (or now), but no
        less than the VmHWM of any one of them (a lower bound of the true peak of the sum).
        """
        if self.proc is None or self.proc.poll() is not None:
            return {}
        rss, hwm, threads = tree_rss_kb(self.proc.pid)
        own = proc_status(self.proc.pid).get("VmRSS", 0)
        peak = max([rss, hwm, *self.rss_samples_kb])
        return {
            "rss_mb": round(rss / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1),
            "children_rss_mb": round((rss - own) / 1024, 1),
            "processes": 1 + len(descendants(self.proc.pid)),
            "threads": threads,
        }

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM (the daemon drains for shutdown.grace), kill after `grace`."""
        code = stop_process(self.proc, signal.SIGTERM, grace=grace)
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return code

    def close(self) -> None:
        self.stop()
        self.proc = None


# -- PostgreSQL, the other storage engine ---------------------------------------------------------


def _loopback_url(url: str) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise BenchError(f"refusing a non-loopback PostgreSQL address ({host!r})")
    return url


# Auxiliary processes of a PostgreSQL server, by their process title ("postgres: walwriter").
# They live as long as the server; everything else (backends, autovacuum workers, and the
# children the postmaster has already reaped) is counted as "backends".
PG_AUX = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
)


class Postgres:
    """The bench's PostgreSQL server: tests/pg.py's throwaway cluster (initdb in a temp dir,
    127.0.0.1 on a free port, fsync on), or WEBHOOKD_TEST_POSTGRES_URL's server if set.

    Started once per bench invocation (`start()`), stopped by `close()` (the bench calls it
    from `finally`, so Ctrl-C and SIGTERM stop it too; a SIGKILL of the bench leaves it
    running, as pg_ctl detaches the server). Each run gets a fresh schema (`new_schema()`,
    dropped by `drop_schema()`). CPU is read from /proc for the postmaster's process tree;
    with an external server whose postmaster.pid cannot be read, it is None.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.url = ""
        self.postmaster: int | None = None
        self.external = False

    def start(self) -> Postgres:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests import pg  # type: ignore[import-not-found]

        try:
            cluster = self._stack.enter_context(pg.pg_cluster())
        except pg.PostgresMissing as exc:
            self._stack.close()
            raise BenchError(f"{exc} (or run `bash bench/setup.sh`)") from None
        except BaseException:
            self._stack.close()
            raise
        try:
            self.url = _loopback_url(cluster.url)
            self.external = not cluster.managed
            data = cluster.data if cluster.managed else asyncio.run(self._data_directory())
            self.postmaster = _postmaster_pid(data) if data is not None else None
        except BaseException:
            self.close()
            raise
        return self

    async def _data_directory(self) -> Path | None:
        import asyncpg  # type: ignore[import-untyped]

        con = await asyncpg.connect(self.url)
        try:
            value = await con.fetchval("SELECT current_setting('data_directory', true)")
        except Exception:
            value = None
        finally:
            await con.close()
        return Path(value) if value else None

    def close(self) -> None:
        self._stack.close()
        self.postmaster = None

    def new_schema(self) -> str:
        from tests import pg

        name: str = "bench_" + pg.fresh_schema()
        return name

    async def drop_schema(self, schema: str) -> None:
        """Drop a run's schema, then CHECKPOINT, so that the next run neither inherits the
        last one's dirty pages nor pays for flushing them."""
        import asyncpg

        con = await asyncpg.connect(self.url)
        try:
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            with contextlib.suppress(Exception):  # needs pg_checkpoint / superuser
                await con.execute("CHECKPOINT")
        finally:
            await con.close()

    def cpu_seconds(self) -> float | None:
        """CPU used so far by every process of the server (and the ones it reaped)."""
        if self.postmaster is None:
            return None
        return cpu_seconds(self.postmaster, tree=True)

    def runqueue_seconds(self) -> float | None:
        """Seconds the server's live processes have waited for a CPU (runqueue_seconds)."""
        if self.postmaster is None:
            return None
        return runqueue_seconds(self.postmaster, tree=True)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far by kind of process: the auxiliary processes by name (PG_AUX),
        the postmaster itself, and "backends": all the rest, reaped children included."""
        if self.postmaster is None:
            return {}
        total = cpu_seconds(self.postmaster, tree=True)
        out: dict[str, float] = {}
        for pid in process_tree(self.postmaster):
            title = " ".join(cmdline(pid)).strip()
            if pid == self.postmaster:
                kind = "postmaster"
            else:
                kind = title.removeprefix("postgres: ").strip()
                if kind not in PG_AUX:
                    continue
            out[kind] = out.get(kind, 0.0) + cpu_seconds(pid, tree=False)
        out["backends"] = total - sum(out.values())
        return out

    async def stats(self) -> dict[str, float]:
        """Cluster-wide counters: commits (all databases), WAL records, bytes, writes and
        syncs (pg_stat_wal, PostgreSQL 14+). Backends report them at most once a second,
        so a delta over a run of a few seconds is approximate."""
        import asyncpg

        con = await asyncpg.connect(self.url)
        try:
            commits = await con.fetchval("SELECT sum(xact_commit) FROM pg_stat_database")
            out = {"commits": float(commits or 0)}
            with contextlib.suppress(Exception):
                row = await con.fetchrow(
                    "SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
                )
                out.update({k: float(v) for k, v in dict(row).items()})
            return out
        finally:
            await con.close()

    async def watch(self, stop: asyncio.Event, interval: float = 0.1) -> dict[str, Any]:
        """Sample pg_stat_activity every `interval` seconds until `stop` is set: what the
        daemons' connections (application_name webhookd) are doing. Returns the samples
        taken and the mean number of connections per "<state>[ <wait event>]: <query>"
        (query: the name of webhookd's query, see query_names). `idle in transaction` is
        a connection inside a transaction waiting for its daemon; `active` without a wait
        event is a backend on a CPU (or waiting for one)."""
        import asyncpg

        names = query_names()
        counts: dict[str, int] = {}
        samples = 0
        con = await asyncpg.connect(self.url)
        try:
            while not stop.is_set():
                rows = await con.fetch(
                    "SELECT state, wait_event_type, wait_event, left(query, 400) AS query "
                    "FROM pg_stat_activity WHERE application_name = 'webhookd' "
                    "AND pid <> pg_backend_pid()"
                )
                samples += 1
                for row in rows:
                    key = _activity_key(row, names)
                    counts[key] = counts.get(key, 0) + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
        finally:
            await con.close()
        return {
            "samples": samples,
            "connections": {
                k: round(v / max(1, samples), 2)
                for k, v in sorted(counts.items(), key=lambda kv: -kv[1])
            },
        }


def query_names() -> dict[str, str]:
    """The first 200 characters of each named query of the PostgreSQL engine -> its name,
    from the queries.sql of the code the daemons run (CODE_DIR, else the working tree),
    split as webhookd/store/postgres/queries.py splits it ("-- name: X" sections)."""
    path = (CODE_DIR or REPO) / "webhookd" / "store" / "sql" / "postgresql" / "queries.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    try:
        from webhookd.store.postgres.common import MATCHES
    except Exception:  # the names still match where {MATCHES} is not used
        MATCHES = "{MATCHES}"
    parts = re.split(r"^-- name: (\w+)\s*$", text, flags=re.MULTILINE)
    return {
        sql.replace("{MATCHES}", MATCHES).strip().rstrip(";")[:200]: name
        for name, sql in zip(parts[1::2], parts[2::2], strict=True)
    }


def _activity_key(row: Mapping[str, Any], names: Mapping[str, str]) -> str:
    state = row["state"] or "?"
    if state == "idle":
        return "idle"
    text = (row["query"] or "").strip()
    name = names.get(text[:200])
    if name is None:  # the first line that is not a comment
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        code = [ln for ln in lines if not ln.startswith("--")] or lines or ["?"]
        name = " ".join(code[0].split())[:48]
    wait = f" {row['wait_event_type']}:{row['wait_event']}" if row["wait_event"] else ""
    return f"{state}{wait}: {name}"


def _postmaster_pid(data: Path) -> int | None:
    """The server's pid: the first line of <data>/postmaster.pid (None if unreadable)."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


# -- the admin / ingest API ------------------------------------------------------------------------


class Api:
    """The daemon's API over one aiohttp session (127.0.0.1 only)."""

    def __init__(self, base: str, *, connections: int = 32) -> None:
        if not base.startswith(("http://127.0.0.1:", "http://localhost:")):
            raise BenchError(f"refusing a non-loopback API address {base!r}")
        self.base = base
        self._headers = {"Authorization": f"Bearer {TOKEN}"}
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = dict(self._headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(
            method, self.base + path, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = await self.request(method, path, body)
        if not 200 <= status < 300:
            raise BenchError(f"{method} {path}: {status} {payload}")
        return payload

    async def get_json(self, url: str) -> Any:
        """GET a JSON document from another loopback server (a receiver)."""
        if not url.startswith("http://127.0.0.1:"):
            raise BenchError(f"refusing a non-loopback address {url!r}")
        async with self._session.get(url) as resp:
            return await resp.json()

    async def create_webhook(self, url: str, event_types: list[str], **settings: Any) -> str:
        """`settings`: the webhook's own (rate_limit, max_in_flight, ordering)."""
        created = await self.ok(
            "POST", "/v1/webhooks", {"url": url, "event_types": event_types, **settings}
        )
        return str(created["webhook_id"])

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.ok("GET", "/v1/status")
        return result

    async def metrics_text(self) -> str:
        """GET /metrics (Prometheus text exposition, same bearer token): the raw text."""
        async with self._session.get(self.base + "/metrics", headers=self._headers) as resp:
            text = await resp.text()
            if not 200 <= resp.status < 300:
                raise BenchError(f"GET /metrics: {resp.status} {text[:200]}")
            return text

    async def delivered_attempts(self) -> float | None:
        """The daemon's in-memory count of successful attempts: the sum of the samples
        webhookd_attempts_total{outcome="delivered"} of GET /metrics (over every
        status_class). None if the daemon exposes no such counter."""
        from prometheus_client.parser import text_string_to_metric_families

        total: float | None = None
        for family in text_string_to_metric_families(await self.metrics_text()):
            # The parser names a counter's family without "_total"; accept either.
            if family.name not in ("webhookd_attempts", "webhookd_attempts_total"):
                continue
            total = total or 0.0
            for sample in family.samples:
                if (
                    sample.name == "webhookd_attempts_total"
                    and sample.labels.get("outcome") == "delivered"
                ):
                    total += sample.value
        return total


async def wait_until(
    predicate_coro: Any, *, deadline: float, interval: float = 0.05
) -> tuple[float, Any]:
    """Await predicate_coro() every `interval` until it returns (True, x); (time, x) or raise."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        done, last = await predicate_coro()
        if done:
            return time.perf_counter(), last
        await asyncio.sleep(interval)
    raise BenchError(f"not done after {deadline}s; last: {last}")
