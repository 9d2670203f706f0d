"""What the daemon delivers to, and what it is measured against: nginx answering 204 (the
sink), bench.receivers in a subprocess, and the bare loop of bench.baseline.

Every process started here is stopped by its owner's close() (called from finally or an
ExitStack), killed if it does not stop in time, and every wait is bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.code import REPO, BenchError, code_dir, code_env
from bench.procfs import MachineCpu
from tests.kit.procs import die_with_parent, free_port, stop_process, wait_port

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


# -- helper servers in their own processes (python -m bench.receivers) -----------------------


class Receiver:
    """`python -m bench.receivers` in a subprocess: `timestamp` (arrivals) or `blackhole`."""

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
            [sys.executable, "-m", "bench.receivers", self.mode, str(self.port)],
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
    """Run `python -m bench.baseline` in a subprocess; its JSON result (posts, seconds, per_second),
    with the cores the machine kept busy meanwhile and the sink's CPU per POST."""
    cmd = [
        sys.executable,
        "-m",
        "bench.baseline",
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
        cwd=code_dir(),
        env=code_env(dict(os.environ)),
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
