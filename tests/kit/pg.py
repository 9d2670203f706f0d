"""A throwaway PostgreSQL server, started once per test session (or bench invocation).

`pg_cluster()` yields a PgCluster: a server made by initdb in a temporary directory,
listening on 127.0.0.1 (a free port) and on a unix socket in that directory, trust
authentication, fsync on (these are durability tests), run as the `postgres` user when
the tests run as root (initdb refuses root), and stopped and removed afterwards. With
WEBHOOKD_TEST_POSTGRES_URL set, that server is used instead (it cannot be restarted).

Each test uses a schema of its own: `fresh_schema()` names one, `drop_schema()` drops it.
A watcher process stops the server and removes its directory if the test process dies
without doing so (killed by a timeout, say), so that no server outlives its tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from tests.kit.procs import free_port

ENV_URL = "WEBHOOKD_TEST_POSTGRES_URL"
PREFERRED_VERSION = "15"


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def find_bindir() -> Path:
    """/usr/lib/postgresql/15/bin, or the newest /usr/lib/postgresql/*/bin there is."""
    preferred = Path(f"/usr/lib/postgresql/{PREFERRED_VERSION}/bin")
    if (preferred / "initdb").exists():
        return preferred
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresMissing(
            "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "install it (Debian: apt-get install postgresql; .ci/run does) or set "
            f"{ENV_URL} to a server the tests may create schemas in"
        )
    return found[-1]


class PgCluster:
    """A PostgreSQL server for tests: `.url`, and `.stop()`, `.start()`, `.restart()`."""

    def __init__(
        self, url: str, *, root: Path | None = None, port: int = 0, bindir: Path | None = None
    ) -> None:
        self.url = url
        self.root = root  # None: an external server, not ours to stop
        self.port = port
        self.bindir = bindir

    @property
    def managed(self) -> bool:
        return self.root is not None

    @property
    def data(self) -> Path:
        assert self.root is not None, "an external server (WEBHOOKD_TEST_POSTGRES_URL)"
        return self.root / "data"

    def _run(self, *args: str) -> None:
        assert self.bindir is not None
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.root / "log" if self.root else None
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{tail}"
            )

    def _options(self) -> str:
        assert self.root is not None
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=on -c max_connections=300"
        )

    def start(self) -> None:
        assert self.root is not None
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
            "-o", self._options(), "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" (clean), or "immediate" (a crash: recovery at start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "immediate") -> None:
        """Stop (by default as a crash, `pg_ctl restart -m immediate`) and start again."""
        assert self.root is not None
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-m", mode, "-w",
            "-t", "60", "-o", self._options(), "restart",
        )  # fmt: skip


# Run by a detached interpreter: wait for the test process to end, then stop the server.
_WATCHER = """
import os, shutil, subprocess, sys, time
pid, root, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(0.5)
subprocess.run(command, capture_output=True, timeout=120)
shutil.rmtree(root, ignore_errors=True)
"""


def _watch(cluster: PgCluster) -> subprocess.Popen[bytes]:
    assert cluster.root is not None and cluster.bindir is not None
    stop = [str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data), "-m", "immediate", "stop"]
    if os.geteuid() == 0:
        stop = ["runuser", "-u", "postgres", "--", *stop]
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(os.getpid()), str(cluster.root), *stop],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """A server for the whole session: WEBHOOKD_TEST_POSTGRES_URL's, or a fresh one."""
    external = os.environ.get(ENV_URL)
    if external:
        yield PgCluster(external)
        return
    bindir = find_bindir()
    root = Path(tempfile.mkdtemp(prefix="webhookd-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    cluster = PgCluster(
        f"postgresql://postgres@127.0.0.1:{port}/postgres", root=root, port=port, bindir=bindir
    )
    watcher = None
    try:
        cluster._run(
            "initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        watcher = _watch(cluster)
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
        if watcher is not None:
            watcher.kill()
            watcher.wait()


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return "t_" + uuid.uuid4().hex[:16]


async def drop_schema(url: str, schema: str) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await con.close()
