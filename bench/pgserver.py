"""The bench's PostgreSQL server (the kit's throwaway one) and what it costs: the CPU of its
processes, commits and WAL, and what the daemons' connections are doing."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.code import BenchError, code_dir
from bench.procfs import cmdline, cpu_seconds, process_tree, runqueue_seconds
from tests.kit import pg


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
    """The bench's PostgreSQL server: the kit's throwaway cluster (tests/kit/pg.py: initdb in
    a temp dir, 127.0.0.1 on a free port, fsync on), or WEBHOOKD_TEST_POSTGRES_URL's server if set.

    Started once per bench invocation (`start()`), stopped by `close()` (the bench calls it
    from `finally`, so Ctrl-C and SIGTERM stop it too; after a SIGKILL of the bench, the
    kit's watcher process stops it). Each run gets a fresh schema (`new_schema()`,
    dropped by `drop_schema()`). CPU is read from /proc for the postmaster's process tree;
    with an external server whose postmaster.pid cannot be read, it is None.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.url = ""
        self.postmaster: int | None = None
        self.external = False

    def start(self) -> Postgres:
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

    async def watch(
        self, stop: asyncio.Event, ready: asyncio.Event | None = None, interval: float = 0.1
    ) -> dict[str, Any]:
        """Sample pg_stat_activity every `interval` seconds until `stop` is set (`ready`
        is set once connected, see below): what the
        daemons' connections (application_name webhookd) are doing. Returns the samples
        taken and the mean number of connections per "<state>[ <wait event>]: <query>"
        (query: the name of webhookd's query, see query_names). `idle in transaction` is
        a connection inside a transaction waiting for its daemon; `active` without a wait
        event is a backend on a CPU (or waiting for one)."""
        import asyncpg

        # Reading the queries and connecting hold the loop for ~0.1 s: a load generator
        # started before they are done sent its first events in a burst (the 13 slowest
        # ingests of a 1,000-event run, and so its p99, were that burst).
        names = query_names()
        counts: dict[str, int] = {}
        samples = 0
        con = await asyncpg.connect(self.url)
        if ready is not None:
            ready.set()
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
    from the queries.sql of the code the daemons run (bench.code.code_dir()),
    split as webhookd/store/postgres/queries.py splits it ("-- name: X" sections)."""
    path = code_dir() / "webhookd" / "store" / "sql" / "postgresql" / "queries.sql"
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
