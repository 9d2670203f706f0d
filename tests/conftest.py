"""Shared fixtures: settings on a temporary DuckDB file, the daemon in-process or as a
subprocess, and a small API client. Everything listens on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w

from tests.pg import PgCluster, drop_schema, fresh_schema, pg_cluster
from webhookd.config import Settings, load_settings
from webhookd.daemon import Daemon
from webhookd.store.base import Store
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.postgres import PostgresStore

# PostgresStore fixtures (`stores`, `con`) for the PostgreSQL engine's tests.
pytest_plugins = ["tests.pg_stores"]

TOKEN = "test-admin-token-0123456789abcdef"
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


REPO = Path(__file__).resolve().parent.parent

# The storage engines every conformance test runs on (see `store` below).
ENGINES = ("duckdb", "postgresql")


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
    """A store of `engine`, in this process, on a fresh file or schema."""
    if engine == "duckdb":
        return DuckDBStore(tmp_path / "q.duckdb")
    cluster: PgCluster = request.getfixturevalue("pg")
    schema: str = request.getfixturevalue("pg_schema")
    return PostgresStore(cluster.url, schema=schema, pool_size=4)


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


class Api:
    """A thin client for the daemon's API, for tests."""

    def __init__(self, base: str, token: str = TOKEN) -> None:
        self.base = base
        self.token = token
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self._session.request(
            method, self.base + path, data=data, headers=headers, params=params
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        status, payload = await self.request(method, path, body, **kw)
        assert 200 <= status < 300, (status, payload)
        return payload

    async def create_webhook(self, url: str, **fields: Any) -> dict[str, Any]:
        created: dict[str, Any] = await self.ok("POST", "/v1/webhooks", {"url": url, **fields})
        return created

    async def emit(self, events: Any) -> list[str]:
        payload = await self.ok("POST", "/v1/events", events)
        ids: list[str] = payload["ids"]
        return ids

    async def deliveries(self, **params: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"limit": "1000", **params}
            if cursor:
                query["cursor"] = cursor
            page = await self.ok("GET", "/v1/deliveries", params=query)
            items.extend(page["items"])
            cursor = page["next"]
            if not cursor:
                return items

    async def wait_status(
        self, expected: Mapping[str, int], *, deadline: float = 15.0, **params: str
    ) -> list[dict[str, Any]]:
        """Poll deliveries until the counts by status are as expected."""
        end = time.monotonic() + deadline
        while True:
            items = await self.deliveries(**params)
            counts: dict[str, int] = {}
            for item in items:
                counts[item["status"]] = counts.get(item["status"], 0) + 1
            if counts == dict(expected):
                return items
            if time.monotonic() > end:
                raise AssertionError(f"deliveries are {counts}, expected {dict(expected)}")
            await asyncio.sleep(0.02)


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


class DaemonProcess:
    """`python -m webhookd run` as a real subprocess, its stdout in a file."""

    def __init__(self, config: Path, log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log_offset = 0

    def start(self, *, deadline: float = 30.0) -> DaemonProcess:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webhookd", "run", "--config", str(self.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        out.close()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            for line in self.lines():
                if line.get("event") == "webhookd ready":
                    self.url = "http://" + line["listen"]
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.02)
        raise AssertionError(f"daemon not ready in {deadline}s: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[self._log_offset :]

    def lines(self) -> list[dict[str, Any]]:
        result = []
        for raw in self.output().splitlines():
            with contextlib.suppress(ValueError):
                result.append(json.loads(raw))
        return result

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.wait()


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    """Started processes are killed at the end of the test whatever happens."""
    started: list[DaemonProcess] = []
    yield started
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)
