"""Slow, silent and too many API clients: the daemon closes them and keeps delivering.

Raw sockets on 127.0.0.1 against a real daemon (in this process, or a subprocess with a
small open-file limit). The timeouts are configured short; every wait has a generous
deadline and nothing depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN, Api, DaemonProcess, make_settings, running, write_config
from tests.receivers import Recorder, Reply

DEADLINE = 15.0
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*address(url))


async def until_closed(reader: asyncio.StreamReader, deadline: float = DEADLINE) -> bytes:
    """What the daemon sent until it closed the connection (EOF or reset)."""
    got = b""
    try:
        async with asyncio.timeout(deadline):
            while chunk := await reader.read(65536):
                got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {deadline}s") from None
    return got


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    async with asyncio.timeout(DEADLINE):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


def get(path: str, *extra: bytes) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: webhookd\r\n" + b"".join(extra) + b"\r\n"


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


@contextlib.asynccontextmanager
async def opened(url: str, count: int) -> AsyncIterator[list[asyncio.StreamReader]]:
    """`count` connections that send nothing; closed on exit."""
    conns = [await connect(url) for _ in range(count)]
    try:
        yield [reader for reader, _ in conns]
    finally:
        await asyncio.gather(*(close(writer) for _, writer in conns))


# -- deadlines ------------------------------------------------------------------------------

INCOMPLETE_HEADS = {
    "nothing": b"",
    "half a request line": b"GET /v1/sta",
    "a request line": b"GET /healthz HTTP/1.1\r\n",
    "headers without the blank line": b"GET /v1/status HTTP/1.1\r\nHost: webhookd\r\n" + AUTH,
}


async def test_connections_without_a_whole_request_head_are_closed(tmp_path: Path) -> None:
    """idle_timeout is an hour: only the header deadline can close these."""
    settings = make_settings(tmp_path, admin={"header_timeout": "300ms", "idle_timeout": "1h"})
    async with running(settings) as d:
        conns = []
        for raw in INCOMPLETE_HEADS.values():
            for _ in range(5):
                reader, writer = await connect(d.url)
                writer.write(raw)
                conns.append((reader, writer))
        answers = await asyncio.gather(*(until_closed(reader) for reader, _ in conns))
        assert answers == [b""] * len(conns)  # closed, nothing said
        async with Api(d.url) as api:
            assert await api.ok("GET", "/healthz") == {"status": "ok"}
        for _, writer in conns:
            await close(writer)


async def test_a_head_trickled_a_line_at_a_time_is_cut_off(tmp_path: Path) -> None:
    """Slowloris: a header value a byte every 50 ms, never the end of the head."""
    settings = make_settings(tmp_path, admin={"header_timeout": "300ms", "idle_timeout": "1h"})
    async with running(settings) as d:
        reader, writer = await connect(d.url)

        async def trickle() -> None:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: webhookd\r\nX-Slow: ")
            for _ in range(1000):
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.05)  # the attack's pace, not a synchronisation

        sender = asyncio.create_task(trickle())
        try:
            assert await until_closed(reader) == b""
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            await close(writer)


async def test_kept_alive_connections_close_when_idle(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, admin={"header_timeout": "1h", "idle_timeout": "300ms"})
    async with running(settings) as d:
        reader, writer = await connect(d.url)
        writer.write(get("/healthz"))
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection", "").lower() != "close"
        assert await until_closed(reader) == b""
        await close(writer)


async def test_the_next_request_on_a_kept_alive_connection_has_the_header_deadline(
    tmp_path: Path,
) -> None:
    """Idle between requests is fine (idle_timeout); once the next head starts, it must
    finish within header_timeout. A body the daemon did not read is no head."""
    settings = make_settings(tmp_path, admin={"header_timeout": "200ms", "idle_timeout": "1h"})
    async with running(settings) as d:
        reader, writer = await connect(d.url)
        writer.write(get("/healthz"))
        assert (await read_response(reader))[0] == 200
        # An unauthenticated POST: answered 401 before its body is read; the rest of the
        # body then arrives on a connection that is not reading a head.
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\nContent-Type: application/json\r\n"
            b"Content-Length: 40\r\n\r\n" + b"[" * 20
        )
        assert (await read_response(reader))[0] == 401
        writer.write(b"]" * 20)
        # Idle for several header deadlines: the scenario, not a synchronisation.
        await asyncio.sleep(1.0)
        writer.write(get("/healthz"))
        assert (await read_response(reader))[0] == 200
        writer.write(b"GET /hea")
        assert await until_closed(reader) == b""
        await close(writer)


async def test_a_body_that_does_not_arrive_in_time_is_408(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, admin={"header_timeout": "1h", "idle_timeout": "1h", "body_timeout": "300ms"}
    )
    async with running(settings) as d:
        reader, writer = await connect(d.url)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\nContent-Type: application/json\r\n"
            + AUTH
            + b"Content-Length: 100\r\n\r\n"
            + b'{"type": "a",'
        )
        status, _, body = await read_response(reader)
        assert status == 408
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and "admin.body_timeout" in error["message"]
        assert await until_closed(reader) == b""
        await close(writer)
        async with Api(d.url) as api:
            assert await api.emit({"id": "evt_after", "type": "a", "data": 1}) == ["evt_after"]


# -- the connection cap ---------------------------------------------------------------------


async def test_past_max_connections_a_connection_is_answered_503_and_closed(
    tmp_path: Path,
) -> None:
    settings = make_settings(
        tmp_path, admin={"max_connections": 3, "header_timeout": "1h", "idle_timeout": "1h"}
    )
    async with running(settings) as d:
        held = []
        for _ in range(3):
            reader, writer = await connect(d.url)
            writer.write(get("/healthz"))
            assert (await read_response(reader))[0] == 200  # admitted, and kept alive
            held.append((reader, writer))
        reader, writer = await connect(d.url)
        refused = await until_closed(reader)
        await close(writer)
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        error = json.loads(refused.partition(b"\r\n\r\n")[2])["error"]
        assert error["code"] == "too_many_connections"
        assert "admin.max_connections" in error["message"]
        # One held connection goes: its place is free again.
        await close(held.pop()[1])
        async with asyncio.timeout(DEADLINE):
            while True:
                reader, writer = await connect(d.url)
                writer.write(get("/healthz", b"Connection: close\r\n"))
                answer = await until_closed(reader)
                await close(writer)
                if answer.startswith(b"HTTP/1.1 200 "):
                    break
                assert answer.startswith(b"HTTP/1.1 503 "), answer
        for reader, writer in held:  # still served
            writer.write(get("/healthz"))
            assert (await read_response(reader))[0] == 200
            await close(writer)


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return daemon.lines()


async def test_idle_connections_cannot_take_the_descriptors_deliveries_need(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    """The incident: a process at its open-file limit, held by idle API connections, could
    open no socket to deliver. Here the limit is 256 and 300 connections sit idle (the
    header deadline is an hour); max_connections is unset, so half the limit (128)."""
    nofile = 256
    idle = 300
    config = write_config(
        tmp_path,
        admin={"header_timeout": "1h", "idle_timeout": "1h"},
        delivery={"max_attempts": 100_000, "retry_schedule": ["100ms"]},
    )
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    daemon_process.append(daemon)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < idle + 200:
        pytest.skip(f"needs an open-file limit above {idle + 200}")
    # Every attempt needs a new socket (no connection to reuse), as with many receivers.
    close_after = {"Connection": "close"}
    async with Recorder(status=500, headers=close_after) as rx:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
        try:
            await asyncio.to_thread(daemon.start)  # the daemon inherits the small limit
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        (limits,) = [line for line in daemon.lines() if line.get("event") == "API limits"]
        assert limits["max_connections"] == nofile // 2
        async with Api(daemon.url) as api:
            await api.create_webhook(rx.url_for("/hook"))
            await api.emit({"id": "evt_starved", "type": "a", "data": 1})
        await rx.wait_for_requests(1, deadline=DEADLINE)  # failing (500) and retried

        async with opened(daemon.url, idle) as readers:
            watchers = [asyncio.create_task(until_closed(r, deadline=60)) for r in readers]
            # Those past the cap are answered 503 and closed; the rest stay open.
            async with asyncio.timeout(DEADLINE):
                while sum(w.done() for w in watchers) < idle - nofile // 2:
                    await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
            refusals = [w.result() for w in watchers if w.done()]
            assert all(r.startswith(b"HTTP/1.1 503 ") or r == b"" for r in refusals)
            # With the API full, the workers still open sockets: the receiver now accepts.
            before = len(rx.requests)
            rx.reply = Reply(status=204, headers=close_after)
            await rx.wait_for_requests(before + 1, deadline=DEADLINE)
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

        async with Api(daemon.url) as api:
            items = await api.wait_status({"delivered": 1}, deadline=DEADLINE)
            log = await api.ok(
                "GET", f"/v1/deliveries/{items[0]['webhook_id']}/evt_starved/attempts"
            )
        assert log["items"][-1]["status_code"] == 204
        assert not any("open files" in (a["error"] or "") for a in log["items"])
    lines = daemon.lines()
    assert any(line.get("event", "").startswith("API connections refused") for line in lines)
    assert not [line for line in lines if line.get("level") in ("error", "critical")]
    assert "Traceback" not in daemon.output()
