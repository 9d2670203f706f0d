"""The database lives in a child process of the daemon: it dies with the daemon, its death
stops the daemon, SIGTERM sent to both (systemd does) still drains, and every value that
crosses the boundary arrives intact."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from tests.conftest import Api, DaemonProcess
from tests.test_crash import CountingReceiver, _wait_for, query, start_daemon
from webhookd.events import NewEvent
from webhookd.states import Status
from webhookd.store.base import (
    Claim,
    EventConflict,
    NotFound,
    Outcome,
    Page,
    StatusReport,
    StoreUnavailable,
)


def store_child(proc: DaemonProcess) -> int:
    """The pid of the daemon's database process."""
    assert proc.proc is not None
    pid = proc.proc.pid
    children = [
        int(child)
        for task in os.listdir(f"/proc/{pid}/task")
        for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
    ]
    found = [
        child
        for child in children
        if b"webhookd.store.duckdb.server" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    assert len(found) == 1, children
    return found[0]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _opens_read_write(path: Path) -> bool:
    try:
        duckdb.connect(str(path)).close()
    except duckdb.Error:
        return False
    return True


async def test_the_database_process_dies_with_the_daemon(
    tmp_path: Path,
    daemon_process: list,  # type: ignore[type-arg]
) -> None:
    proc = start_daemon(tmp_path, daemon_process)
    child = store_child(proc)
    assert alive(child)
    proc.kill()  # SIGKILL: the daemon gets no chance to close anything
    await _wait_for(lambda: not alive(child), 10, "the database process to die")
    end = time.monotonic() + 10
    while not await _opens_read_write(tmp_path / "webhookd.duckdb"):
        assert time.monotonic() < end, "the database file stayed locked"
        await asyncio.sleep(0.05)


async def test_a_dead_database_process_stops_the_daemon_and_loses_nothing(
    tmp_path: Path,
    daemon_process: list,  # type: ignore[type-arg]
) -> None:
    proc = start_daemon(tmp_path, daemon_process)
    async with CountingReceiver() as rx:
        async with Api(proc.url) as api:
            await api.create_webhook(f"{rx.url}/h")
            ids = await api.emit([{"type": "t", "data": {"i": i}} for i in range(50)])
        await _wait_for(lambda: len(rx.seen) >= 5, 15, "some deliveries")
        os.kill(store_child(proc), signal.SIGKILL)
        code = await asyncio.to_thread(proc.wait, 30)
        assert code == 1
        assert any(
            line.get("event") == "the database process exited unexpectedly"
            and line.get("level") == "error"
            for line in proc.lines()
        ), proc.output()
        proc.start()
        async with Api(proc.url) as api:
            # Attempts that reached the receiver before the kill may not have been recorded:
            # those rows were rescued to pending and are delivered again now.
            await api.wait_status({"delivered": 50}, deadline=30)
        assert {e for _, e in rx.seen} == set(ids)
        assert proc.stop() == 0
    assert query(tmp_path, "SELECT DISTINCT status FROM webhook_delivery_queue") == [("delivered",)]


async def test_sigterm_to_every_process_of_the_service_still_drains(
    tmp_path: Path,
    daemon_process: list,  # type: ignore[type-arg]
) -> None:
    """systemd's stop signals the whole control group: the database process must outlive
    the drain, or the in-flight outcomes could not be recorded."""
    proc = start_daemon(
        tmp_path,
        daemon_process,
        delivery={"workers": 2, "per_webhook_concurrency": 2},
        shutdown={"grace": "10s"},
    )
    async with CountingReceiver() as rx:
        rx.hold = asyncio.Event()
        async with Api(proc.url) as api:
            await api.create_webhook(f"{rx.url}/h")
            await api.emit([{"type": "t", "data": {"i": i}} for i in range(2)])
        await _wait_for(lambda: rx.entered == 2, 15, "two attempts in flight")
        child = store_child(proc)
        os.kill(child, signal.SIGTERM)
        proc.signal(signal.SIGTERM)
        await _wait_for(lambda: "stopping" in proc.output(), 10, "the daemon to start draining")
        assert alive(child)
        rx.hold.set()
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
    assert not alive(child)
    assert query(tmp_path, "SELECT status, attempts FROM webhook_delivery_queue") == [
        ("delivered", 1),
        ("delivered", 1),
    ]


NOW = datetime(2026, 11, 27, 12, 0, 0)


@pytest.mark.parametrize(
    "value",
    [
        Claim("wh_1", "evt_1", 2, 1, "https://example.com/h", ("s1", "s2"), b"{}", NOW),
        Outcome(
            "wh_1", "evt_1", 2, Status.PENDING, NOW, NOW, 1.5, 503, "HTTP 503", "busy", "retry"
        ),
        Page([{"id": "wh_1"}], "cursor"),
        NewEvent("evt_1", "t", '{"a":1}', NOW, b'{"data":{"a":1}}'),
        StatusReport({"pending": 1}, {"wh_1": {"pending": 1}}, 1.0, 2, 3, 4, 5, {"wh_2": None}),
    ],
)
def test_values_cross_the_process_boundary_intact(value: object) -> None:
    assert pickle.loads(pickle.dumps(value)) == value


def test_errors_cross_the_process_boundary_intact() -> None:
    conflict = pickle.loads(pickle.dumps(EventConflict(["evt_1", "evt_2"])))
    assert isinstance(conflict, EventConflict)
    assert conflict.event_ids == ["evt_1", "evt_2"]
    assert str(conflict) == str(EventConflict(["evt_1", "evt_2"]))
    for error in (NotFound("no webhook wh_1"), StoreUnavailable("database.path: held")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error)
