"""The systemd notify protocol against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhookd.notify import Notifier

DEADLINE = 5.0


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket playing systemd's notify socket, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def receive(sock: socket.socket, deadline: float = DEADLINE) -> str:
    """The next datagram, waiting at most `deadline` seconds (for synchronous senders)."""
    sock.settimeout(deadline)
    try:
        return sock.recv(4096).decode()
    finally:
        sock.setblocking(False)


async def areceive(sock: socket.socket, deadline: float = DEADLINE) -> str:
    """The next datagram, waiting on the event loop (for senders running on it)."""
    loop = asyncio.get_running_loop()
    data = await asyncio.wait_for(loop.sock_recv(sock, 4096), deadline)
    return data.decode()


def nothing_queued(sock: socket.socket) -> bool:
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


def test_ready_sends_ready_1(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).ready()
    assert receive(sock) == "READY=1"


def test_ready_with_status_sends_both_in_one_datagram(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).ready("serving on 127.0.0.1:8787")
    assert receive(sock) == "READY=1\nSTATUS=serving on 127.0.0.1:8787"


def test_status_sends_status_line(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).status("3 deliveries in flight")
    assert receive(sock) == "STATUS=3 deliveries in flight"


def test_status_newlines_cannot_inject_other_assignments(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).status("draining\nREADY=1")
    assert receive(sock) == "STATUS=draining READY=1"


def test_stopping_sends_stopping_1(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).stopping("draining, grace 10s")
    assert receive(sock) == "STOPPING=1\nSTATUS=draining, grace 10s"


def test_watchdog_sends_watchdog_1(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}).watchdog()
    assert receive(sock) == "WATCHDOG=1"


def test_from_env_reads_os_environ_by_default(
    systemd_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_env()
    assert notifier.enabled
    assert notifier.watchdog_interval() == 15.0
    notifier.ready()
    assert receive(sock) == "READY=1"


def test_abstract_socket_address_works() -> None:
    name = f"webhookd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.ready()
        assert receive(sock) == "READY=1"


def test_watchdog_interval_is_half_of_watchdog_usec(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env).watchdog_interval() == 15.0
    env["WATCHDOG_USEC"] = "500000"
    assert Notifier.from_env(env).watchdog_interval() == 0.25


@pytest.mark.parametrize("value", [None, "", "0", "-5", "soon"])
def test_no_watchdog_interval_without_a_valid_watchdog_usec(
    tmp_path: Path, value: str | None
) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "s")}
    if value is not None:
        env["WATCHDOG_USEC"] = value
    assert Notifier.from_env(env).watchdog_interval() is None


def test_watchdog_pid_of_this_process_is_honoured(tmp_path: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "s"),
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
    }
    assert Notifier.from_env(env).watchdog_interval() == 15.0


@pytest.mark.parametrize("watchdog_pid", [str(os.getpid() + 1), "not-a-pid"])
def test_watchdog_pid_of_another_process_disables_the_watchdog(
    systemd_socket: tuple[socket.socket, str], watchdog_pid: str
) -> None:
    sock, address = systemd_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": watchdog_pid}
    notifier = Notifier.from_env(env)
    assert notifier.watchdog_interval() is None
    # Notifications other than the watchdog still go out.
    assert notifier.enabled
    notifier.ready()
    assert receive(sock) == "READY=1"


def test_everything_is_a_no_op_without_notify_socket(
    systemd_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = systemd_socket
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier.from_env()
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    # A notify socket appears in the environment only now: the notifier read its
    # environment when made (as the daemon's, at start-up), found none, and stays silent.
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier.ready("up")
    notifier.status("fine")
    notifier.watchdog()
    notifier.stopping()
    # The socket does work: a notifier made now reaches it, and its datagram is the first.
    Notifier.from_env().status("control")
    assert receive(sock) == "STATUS=control"
    assert nothing_queued(sock)


@pytest.mark.parametrize("value", ["", "relative/notify.sock", "@", "vsock:2:1234"])
def test_unusable_notify_socket_values_disable_notifications(value: str) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    notifier.ready()


def test_send_failure_is_ignored(tmp_path: Path) -> None:
    notifier = Notifier.from_env(
        {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "1000000"}
    )
    assert notifier.enabled
    notifier.ready("up")
    notifier.status("fine")
    notifier.watchdog()
    notifier.stopping()


async def test_run_watchdog_pings_repeatedly_while_healthy(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    # 20 ms watchdog: a ping every 10 ms.
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"})
    task = asyncio.create_task(notifier.run_watchdog(lambda: True))
    try:
        for _ in range(3):
            assert await areceive(sock) == "WATCHDOG=1"
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_watchdog_pings_only_after_a_healthy_check(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "20000"})
    checks = 0
    seventh_check = asyncio.Event()

    def healthy() -> bool:
        # Checks 1-2 fail, 3 raises, 4 passes, 5 and later fail again.
        nonlocal checks
        checks += 1
        if checks == 7:
            seventh_check.set()
        if checks == 3:
            raise RuntimeError("health check broke")
        return checks == 4

    task = asyncio.create_task(notifier.run_watchdog(healthy))
    try:
        assert await areceive(sock) == "WATCHDOG=1"
        await asyncio.wait_for(seventh_check.wait(), DEADLINE)
        # Six unhealthy checks, one ping in all: the one after the healthy check.
        assert nothing_queued(sock)
    finally:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_watchdog_returns_at_once_without_a_watchdog(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    checks: list[bool] = []

    def healthy() -> bool:
        checks.append(True)
        return True

    await asyncio.wait_for(Notifier.from_env({"NOTIFY_SOCKET": address}).run_watchdog(healthy), 1)
    await asyncio.wait_for(Notifier.from_env({}).run_watchdog(healthy), 1)
    assert checks == []
    assert nothing_queued(sock)


async def test_run_watchdog_is_cancellable_between_pings(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, address = systemd_socket
    # An hour between pings: after the first one the task only sleeps.
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "7200000000"})
    task = asyncio.create_task(notifier.run_watchdog(lambda: True))
    assert await areceive(sock) == "WATCHDOG=1"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE)
    assert nothing_queued(sock)
