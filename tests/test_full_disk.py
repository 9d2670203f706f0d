"""A full disk under the database (issue 13): the database's directory is a small tmpfs
that a filler file fills mid-run.

Ingest answers 503 `storage_full` (never 500, never a 202 for what was not stored), the
daemon keeps running and logs one error for the episode, /readyz says the database is not
writable; once the filler is gone the daemon resumes by itself, and every event that got
a 202 is delivered. DuckDB invalidates the database when a CHECKPOINT finds no room: the
store reopens it by itself, keeping the outcomes it could not write meanwhile.

Mounting needs root: the tests skip, saying why, otherwise. A full disk on a PostgreSQL
server is not tested end to end (it would take a server on its own small file system);
the translation of its DiskFullError into StorageFull is checked here instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import duckdb
import pytest

from tests.conftest import Api, DaemonProcess, write_config
from tests.receivers import Recorder
from webhookd.api.render import webhook_json
from webhookd.events import NewEvent, body
from webhookd.states import Status
from webhookd.store.base import Claim, Outcome, StorageFull, StoreUnavailable
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.postgres.errors import unavailable

TMPFS_SIZE = "32m"
# What the filler leaves free: a few ingests fit, then the disk is full.
LEFT_FREE = 256 * 1024
EVENT_DATA = "x" * 4000
DEADLINE = 60.0


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(directory: Path, leave: int = LEFT_FREE) -> Path:
    """A file taking all of the file system's free space but `leave` bytes."""
    filler = directory / "filler"
    with filler.open("ab") as out:
        out.write(b"\0" * max(0, free_bytes(directory) - leave))
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on its own 32 MB tmpfs, unmounted at the end whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the database needs root")
    directory = tmp_path / "small-disk"
    directory.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            # Still busy (a process of a failed test): detach it now, gone when unused.
            subprocess.run(["umount", "-l", str(directory)], check=False)


def errors_in(proc: DaemonProcess) -> list[dict[str, Any]]:
    return [line for line in proc.lines() if line.get("level") in ("error", "critical")]


async def post_events(api: Api, count: int, tag: str) -> tuple[int, Any]:
    events = [
        {"type": "disk.test", "data": {"tag": tag, "i": i, "pad": EVENT_DATA}} for i in range(count)
    ]
    return await api.request("POST", "/v1/events", events)


async def readiness(api: Api) -> tuple[int, Any]:
    return await api.request("GET", "/readyz")


async def wait_for(check: Any, what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_a_full_disk_answers_503_and_the_daemon_resumes_when_space_is_freed(
    small_disk: Path, tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    config = write_config(
        tmp_path,
        database={"path": str(small_disk / "webhookd.duckdb")},
        scanner={"poll_interval": "100ms"},
    )
    proc = DaemonProcess(config, tmp_path / "daemon.log")
    daemon_process.append(proc)
    proc.start()
    assert proc.proc is not None
    accepted: set[str] = set()
    async with Recorder() as receiver, Api(proc.url) as api:
        await api.create_webhook(receiver.url_for("/hooks"))
        # Before: ingest and delivery work.
        for batch in range(5):
            status, answer = await post_events(api, 10, f"before-{batch}")
            assert status == 202, answer
            accepted.update(answer["ids"])
        await receiver.wait_for_requests(10)

        # The disk fills up: every ingest is a 202 (stored) or a 503 storage_full.
        filler = fill(small_disk)
        refused = 0
        for batch in range(400):
            status, answer = await post_events(api, 10, f"filling-{batch}")
            if status == 202:
                accepted.update(answer["ids"])
                continue
            assert status == 503, (status, answer)
            assert answer["error"]["code"] == "storage_full", answer
            refused += 1
            if refused == 5:
                break
        assert refused == 5, "the disk never filled up"
        # It stays full a while: more ingests are refused the same way, and the scanner's
        # and workers' polls meanwhile log nothing.
        for attempt in range(10):
            await asyncio.sleep(0.3)
            status, answer = await post_events(api, 10, f"full-{attempt}")
            if status == 202:  # a small commit may still find room on the last pages
                accepted.update(answer["ids"])
            else:
                assert (status, answer["error"]["code"]) == (503, "storage_full"), answer
        assert proc.proc.poll() is None, "the daemon exited"
        # Alive (the watchdog keeps being fed), but not ready: the database is not writable.
        assert (await api.request("GET", "/healthz"))[0] == 200

        async def not_ready() -> bool:
            status, answer = await readiness(api)
            return status == 503 and answer["checks"]["database"] is False

        await wait_for(not_ready, "/readyz to say the database is not writable", 10.0)
        # Reads still work while the disk is full.
        during = {d["event_id"]: d["status"] for d in await api.deliveries()}
        errors = errors_in(proc)
        assert len(errors) == 1, errors
        assert "disk is full" in errors[0]["event"], errors

        # Space comes back: the same daemon, without a restart, takes events again.
        filler.unlink()

        async def takes_events() -> bool:
            status, answer = await post_events(api, 10, "after")
            if status == 202:
                accepted.update(answer["ids"])
                return True
            assert (status, answer["error"]["code"]) == (503, "storage_full"), answer
            return False

        await wait_for(takes_events, "ingest to work again", 20.0)

        async def ready() -> bool:
            return (await readiness(api))[0] == 200

        await wait_for(ready, "/readyz to say ready again", 20.0)

        # Every event that got a 202 is delivered, to the receiver and in the queue.
        async def all_delivered() -> bool:
            statuses = {d["event_id"]: d["status"] for d in await api.deliveries()}
            return all(statuses.get(event_id) == "delivered" for event_id in accepted)

        await wait_for(all_delivered, f"all {len(accepted)} accepted events to be delivered")
        received = {r.headers["webhook-id"] for r in receiver.requests}
        assert accepted <= received, sorted(accepted - received)[:5]
        assert proc.proc.poll() is None
    code = proc.stop()
    lines = proc.lines()
    assert code == 0, proc.output()[-3000:]
    errors = errors_in(proc)
    assert len(errors) == 1, errors  # the episode's one line, and nothing after
    ended = [line for line in lines if "disk has room again:" in line.get("event", "")]
    assert len(ended) == 1, ended
    assert "Traceback" not in proc.output()
    print(
        f"accepted {len(accepted)}, refused at least {refused}; during the episode: "
        f"{sum(1 for s in during.values() if s == 'delivered')} delivered"
    )


def new_events(tag: str, count: int) -> list[NewEvent]:
    now = datetime.now(UTC).replace(tzinfo=None)
    events = []
    for i in range(count):
        event_id = f"evt_{tag}_{i}"
        payload = '{"pad":"' + EVENT_DATA + '"}'
        events.append(
            NewEvent(event_id, "disk.test", payload, now, body(event_id, "disk.test", now, payload))
        )
    return events


def outcome_of(claim: Claim) -> Outcome:
    now = datetime.now(UTC).replace(tzinfo=None)
    return Outcome(
        claim.webhook_id,
        claim.event_id,
        claim.attempt,
        Status.DELIVERED,
        None,
        now,
        1.0,
        200,
        None,
        "",
        "delivered",
        claimed_until=claim.claimed_until,
    )


@contextlib.asynccontextmanager
async def opened(path: Path) -> AsyncIterator[DuckDBStore]:
    store = DuckDBStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_an_invalidated_database_is_reopened_and_nothing_is_lost(small_disk: Path) -> None:
    """DuckDB invalidates the database when a CHECKPOINT runs out of room: every later
    statement fails until the file is opened again. The store reopens it by itself; what
    was stored stays stored, and outcomes asked meanwhile are written once there is room."""
    async with opened(small_disk / "q.duckdb") as store:
        hook = webhook_json(
            await store.create_webhook("http://127.0.0.1:9/hooks", [], "whsec_" + "A" * 43, "")
        )
        await store.ingest(new_events("a", 20))
        assert (await store.scan(100)).enqueued == 20
        claims = await store.claim(5, 10, 300.0)
        assert len(claims) == 5
        stored = 20
        filler = fill(small_disk, leave=16 * 1024)
        with pytest.raises(StorageFull):
            for batch in range(50):
                stored += (await store.ingest(new_events(f"b{batch}", 10))).inserted
        assert not store.available()
        # A CHECKPOINT without room, as one run when the disk filled up would be.
        with pytest.raises(StoreUnavailable):
            await store._read(lambda con: con.execute("CHECKPOINT"))
        outcomes = [store.record(outcome_of(c)) for c in claims]
        # Meanwhile (invalidated, or reopened on a disk still full): refused, or stored
        # when a small commit finds room; polls find nothing, or what fits, but never fail.
        for batch in range(5):
            with contextlib.suppress(StorageFull):
                stored += (await store.ingest(new_events(f"c{batch}", 1))).inserted
            assert isinstance(await store.claim(5, 10, 300.0), list)
            assert (await store.scan(100)).events >= 0
        filler.unlink()
        await asyncio.wait_for(asyncio.gather(*outcomes), 30.0)

        async def writable() -> bool:
            return store.available()

        await wait_for(writable, "the store to be writable again", 15.0)
        stored += (await store.ingest(new_events("d", 3))).inserted
        while (await store.scan(1000)).events:
            pass
        report = await store.status()
        assert report.by_status.get("delivered") == 5, report.by_status
        assert sum(report.by_webhook[hook["webhook_id"]].values()) == stored
        assert report.scanner_lag_events == 0
    # The file opens again: nothing is left half written.
    async with opened(small_disk / "q.duckdb") as again:
        assert sum((await again.status()).by_status.values()) == stored


class FullDisk:
    """A cursor whose COMMIT fails as DuckDB's does when the WAL finds no room, while
    `full` is set (the transaction is rolled back by the writer, as after the real one)."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self.full = True
        self.commits_refused = 0

    def execute(self, query: str, parameters: object = None) -> Any:
        if query == "COMMIT" and self.full:
            self.commits_refused += 1
            raise duckdb.TransactionException(
                'TransactionContext Error: Failed to commit: Could not write file "q.duckdb.wal": '
                "No space left on device"
            )
        return self._cursor.execute(query, parameters)

    def close(self) -> None:
        self._cursor.close()


async def test_outcomes_wait_for_room_and_polls_find_nothing_meanwhile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without root: the main writer's commits fail as on a full disk. Outcomes are kept
    (their futures unsettled) and written once commits work again; claims and scans answer
    nothing instead of failing; one error line for the episode, one info line at its end."""
    async with opened(tmp_path / "q.duckdb") as store:
        await store.create_webhook("http://127.0.0.1:9/hooks", [], "whsec_" + "A" * 43, "")
        await store.ingest(new_events("a", 10))
        assert (await store.scan(100)).enqueued == 10
        claims = await store.claim(5, 10, 300.0)
        assert len(claims) == 5
        disks = []
        for cursor in store._cursors:
            disks.append(FullDisk(cursor._cur))
            cursor.attach(disks[-1])  # type: ignore[arg-type]
        outcomes = [store.record(outcome_of(c)) for c in claims]
        assert await store.claim(5, 10, 300.0) == []
        with pytest.raises(StorageFull):
            await store.ingest(new_events("b", 3))
        assert (await store.scan(100)).enqueued == 0
        await asyncio.sleep(2.5)
        assert sum(disk.commits_refused for disk in disks) > 3
        assert not any(f.done() for f in outcomes), "an outcome was given up while held"
        assert not store.available()
        for disk in disks:
            disk.full = False
        await asyncio.wait_for(asyncio.gather(*outcomes), 10.0)

        async def writable() -> bool:
            return store.available()

        await wait_for(writable, "the store to be writable again", 10.0)
        assert len(await store.claim(10, 10, 300.0)) == 5
        await store.ingest(new_events("c", 3))
        assert (await store.scan(100)).enqueued == 3
        report = await store.status()
        assert report.by_status == {"delivered": 5, "inflight": 5, "pending": 3}, report
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "[error" in line]) == 1, lines
    assert len([line for line in lines if "disk has room again:" in line]) == 1, lines


def test_storage_full_crosses_the_process_boundary() -> None:
    back = pickle.loads(pickle.dumps(StorageFull("the database's disk is full")))
    assert type(back) is StorageFull
    assert isinstance(back, StoreUnavailable)
    assert str(back) == "the database's disk is full"


def test_a_postgresql_disk_full_error_is_storage_full() -> None:
    error = unavailable(
        asyncpg.DiskFullError("could not extend file: No space left on device"),
        "postgresql://webhookd:s3cret@db.example/webhookd",
    )
    assert type(error) is StorageFull
    assert "s3cret" not in str(error)
    other = unavailable(ConnectionRefusedError("refused"), "postgresql://db.example/webhookd")
    assert type(other) is StoreUnavailable
