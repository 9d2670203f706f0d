"""Shared fixtures: settings on a temporary DuckDB file, the daemon in-process or as a
subprocess. The daemon process, the API client and the throwaway PostgreSQL server come
from the test kit (tests/kit/, shared with bench/), re-exported here for the tests that
import them from conftest. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from tests.kit.api import TOKEN as TOKEN
from tests.kit.api import Api as Api
from tests.kit.daemon import REPO as REPO
from tests.kit.daemon import DaemonProcess as DaemonProcess
from tests.kit.pg import PgCluster, drop_schema, fresh_schema, pg_cluster
from webhookd.config import Settings, load_settings
from webhookd.daemon import Daemon
from webhookd.store.base import Store
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.engines import make_store

# PostgresStore fixtures (`stores`, `con`) for the PostgreSQL engine's tests.
pytest_plugins = ["tests.pg_stores"]

LOCAL_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


@pytest.fixture(autouse=True)
def no_dns_off_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests send nothing off the machine, not even a DNS query: names under .invalid
    fail here as a resolver would answer (RFC 6761); any other name but localhost is a
    bug in the test."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name in LOCAL_NAMES:
            return real(host, *args, **kwargs)
        try:
            ipaddress.ip_address(str(name).split("%")[0])
        except ValueError:
            if str(name).rstrip(".").endswith(".invalid"):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            raise AssertionError(f"a test tried to resolve {name!r}") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


# The storage engines every conformance test runs on (see `store` below).
ENGINES = ("duckdb", "postgresql")
# DuckDBStore in this process, for the tests of its writer threads and its file.
DUCKDB_IN_PROCESS = "duckdb-in-process"
# Through RemoteStore a scan or claim with nothing new to do waits in the database
# process for the next transaction, up to the poll interval; in a test nothing else
# starts one, so each such call would wait its whole poll interval.
CONFORMANCE_POLL = {"poll_interval": "5ms"}


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL server for the session (or WEBHOOKD_TEST_POSTGRES_URL's)."""
    with pg_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_schema(pg: PgCluster) -> Iterator[str]:
    """A schema of this test's own on the session's server, dropped afterwards."""
    schema = fresh_schema()
    yield schema
    asyncio.run(drop_schema(pg.url, schema))


def open_store(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A store of `engine` on a fresh file or schema, as the daemon opens it
    (store/engines.py): DuckDB through RemoteStore and its database process, PostgreSQL
    through its pool. DUCKDB_IN_PROCESS: a DuckDBStore in this process."""
    if engine == DUCKDB_IN_PROCESS:
        return DuckDBStore(tmp_path / "q.duckdb")
    database: dict[str, Any] = {}
    if engine == "postgresql":
        cluster: PgCluster = request.getfixturevalue("pg")
        database = {"url": cluster.url, "schema": request.getfixturevalue("pg_schema")}
    return make_store(make_settings(tmp_path, database=database, scanner=CONFORMANCE_POLL))


@pytest.fixture(params=ENGINES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The conformance suite's store: each test that takes it runs on every engine."""
    s = open_store(request.param, request, tmp_path)
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """For daemon-level tests that run on every engine: pass it to write_config."""
    return str(request.param)


def to_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    return tomli_w.dumps(sections)


def config_sections(tmp_path: Path, **overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Test defaults: loopback allowed, fast polls, short retries, no real waiting."""
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")
    sections: dict[str, dict[str, Any]] = {
        "database": {"path": str(tmp_path / "webhookd.duckdb")},
        "admin": {"listen": "127.0.0.1:0", "token_file": str(token_file)},
        "scanner": {"poll_interval": "50ms"},
        "delivery": {
            "allow_private_destinations": True,
            "timeout": "5s",
            "lease": "30s",
            "retry_schedule": ["100ms"],
            "jitter": 0.0,
            "workers": 16,
        },
        "shutdown": {"grace": "5s"},
        "logging": {"format": "json", "level": "info"},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    if "url" in sections["database"] or "url_file" in sections["database"]:
        sections["database"].pop("path", None)  # PostgreSQL: a path too is an error
    return sections


def write_config(tmp_path: Path, **overrides: Mapping[str, Any]) -> Path:
    path = tmp_path / "webhookd.toml"
    path.write_text(to_toml(config_sections(tmp_path, **overrides)))
    return path


def make_settings(tmp_path: Path, **overrides: Mapping[str, Any]) -> Settings:
    return load_settings(write_config(tmp_path, **overrides))


class RunningDaemon:
    def __init__(self, daemon: Daemon, task: asyncio.Task[int]) -> None:
        self.daemon = daemon
        self.task = task
        assert daemon.listening is not None
        self.url = "http://" + daemon.listening

    async def stop(self) -> int:
        self.daemon.request_stop("test")
        return await self.task


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningDaemon]:
    """The daemon in this process and event loop, stopped (drained) on exit."""
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not daemon.ready.is_set():
        ready.cancel()
        raise AssertionError(
            f"the daemon did not start: {task.result() if task.done() else 'timeout'}"
        )
    handle = RunningDaemon(daemon, task)
    try:
        yield handle
    finally:
        if not task.done():
            await handle.stop()


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Started processes are killed at the end of the test whatever happens."""
    started: list[DaemonProcess] = []
    yield started
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)
