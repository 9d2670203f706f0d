"""Input that once made the API answer 500 and log a traceback: now a clear 4xx, and
nothing at ERROR in the daemon's output.

One real `python -m webhookd run` subprocess serves the whole module; every test sends
its input over loopback (raw sockets where a client library would refuse to send it),
then reads everything the daemon printed since (stdout and stderr together).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import TOKEN, Api, DaemonProcess, write_config

DEADLINE = 15.0
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WEBHOOKD_")}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    config = write_config(tmp, logging={"format": "json", "level": "info"})
    proc = DaemonProcess(config, tmp / "daemon.log", env=CLEAN_ENV)
    try:
        yield proc.start()
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


class Output:
    """What the daemon prints from now on."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.path = daemon.log_path
        self.start = self.path.stat().st_size

    def text(self) -> str:
        return self.path.read_bytes()[self.start :].decode(errors="replace")

    def assert_quiet(self) -> list[dict[str, Any]]:
        """Every line is a JSON log line, none at error or above, no traceback."""
        lines = []
        for raw in self.text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                raise AssertionError(f"a raw line in the daemon's output: {raw!r}") from None
        loud = [line for line in lines if line.get("level") in ("error", "critical")]
        assert loud == []
        assert "Traceback" not in self.text()
        return lines


def address(daemon: DaemonProcess) -> tuple[str, int]:
    host, _, port = daemon.url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def exchange(daemon: DaemonProcess, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes, read the answer to the end; its status and JSON body."""
    reader, writer = await asyncio.open_connection(*address(daemon))
    try:
        writer.write(raw)
        async with asyncio.timeout(DEADLINE):
            answer = await reader.read(-1)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def request(method: str, target: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1\r\n".encode(), b"Host: webhookd\r\n", *headers]
    if body:
        lines.append(b"Content-Type: application/json\r\n")
        lines.append(f"Content-Length: {len(body)}\r\n".encode())
    lines.append(b"Connection: close\r\n\r\n")
    return b"".join(lines) + body


def error_of(got: tuple[int, dict[str, Any]], status: int, code: str, *mentions: str) -> None:
    actual, body = got
    assert actual == status, got
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, got
    assert body["error"]["code"] == code, got
    for mention in mentions:
        assert mention in body["error"]["message"], (mention, got)


async def still_serving(daemon: DaemonProcess) -> None:
    async with Api(daemon.url) as api:
        assert (await api.ok("GET", "/readyz"))["status"] == "ready"


# -- the Authorization header -----------------------------------------------------------------

NON_ASCII_AUTH = {
    "latin-1 bytes": b"Authorization: Bearer \xff\xfe\xfd\r\n",
    "a token with a byte that is not UTF-8": b"Authorization: Bearer "
    + TOKEN.encode()
    + b"\xe9\r\n",
    "UTF-8 text": "Authorization: Bearer jeton-été\r\n".encode(),
    "non-ASCII scheme": b"Authorization: B\xe9arer " + TOKEN.encode() + b"\r\n",
}


@pytest.mark.parametrize("header", NON_ASCII_AUTH.values(), ids=NON_ASCII_AUTH.keys())
async def test_a_non_ascii_authorization_header_is_401(
    daemon: DaemonProcess, header: bytes
) -> None:
    out = Output(daemon)
    for path in ("/v1/status", "/v1/webhooks"):
        error_of(await exchange(daemon, request("GET", path, header)), 401, "unauthorized")
    await still_serving(daemon)
    out.assert_quiet()


# -- numbers JSON can write but a float cannot hold -------------------------------------------

NON_FINITE = {
    "huge exponent": (b'{"type": "a", "data": 1e999999}', "1e999999"),
    "huge negative": (b'{"type": "a", "data": {"x": [-1.5e400]}}', "-1.5e400"),
    "in a list of events": (b'[{"type": "a", "data": 1}, {"type": "b", "data": 9e9999}]', "9e9999"),
}


@pytest.mark.parametrize(("body", "number"), NON_FINITE.values(), ids=NON_FINITE.keys())
async def test_a_number_beyond_a_float_is_400_naming_it(
    daemon: DaemonProcess, body: bytes, number: str
) -> None:
    out = Output(daemon)
    got = await exchange(daemon, request("POST", "/v1/events", AUTH, body=body))
    error_of(got, 400, "invalid_json", number)
    await still_serving(daemon)
    out.assert_quiet()


# -- page cursors that are not ours -------------------------------------------------------------


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_DELIVERY_CURSORS = {
    "[1,2,3]": "WzEsMiwzXQ",
    "three strings, not a time first": b64(["yesterday", "wh_x", "evt_x"]),
    "a time and numbers": b64(["2024-01-01T00:00:00", 1, 2]),
    "two parts": b64(["2024-01-01T00:00:00", "wh_x"]),
    "an object": b64({"after": "x"}),
    "null": b64(None),
    "nested deeply": base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("="),
    "not base64": "%%%",
    "base64 of bytes that are not UTF-8": base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    "very long": "A" * 5000,
}


@pytest.mark.parametrize("cursor", BAD_DELIVERY_CURSORS.values(), ids=BAD_DELIVERY_CURSORS.keys())
async def test_a_delivery_cursor_of_the_wrong_shape_is_400(
    daemon: DaemonProcess, cursor: str
) -> None:
    out = Output(daemon)
    got = await exchange(daemon, request("GET", f"/v1/deliveries?cursor={cursor}", AUTH))
    error_of(got, 400, "invalid_request", "cursor")
    await still_serving(daemon)
    out.assert_quiet()


BAD_WEBHOOK_CURSORS = {
    "a NUL": "wh_%00",
    "a bidi override": "wh_%E2%80%AE",
    "white space": "wh%20x",
    "a path": "../etc",
    "too long": "w" * 300,
    "not UTF-8": "%ff",
}


@pytest.mark.parametrize("cursor", BAD_WEBHOOK_CURSORS.values(), ids=BAD_WEBHOOK_CURSORS.keys())
async def test_a_webhook_cursor_that_is_no_webhook_id_is_400(
    daemon: DaemonProcess, cursor: str
) -> None:
    out = Output(daemon)
    got = await exchange(daemon, request("GET", f"/v1/webhooks?cursor={cursor}", AUTH))
    error_of(got, 400, "invalid_request", "cursor")
    await still_serving(daemon)
    out.assert_quiet()


async def test_cursors_the_api_gave_out_still_page(daemon: DaemonProcess) -> None:
    async with Api(daemon.url) as api:
        for n in range(3):
            await api.create_webhook(f"http://127.0.0.1:9/page-{n}")
        seen: list[str] = []
        cursor = ""
        while True:
            params = {"limit": "1", **({"cursor": cursor} if cursor else {})}
            page = await api.ok("GET", "/v1/webhooks", params=params)
            seen += [item["webhook_id"] for item in page["items"]]
            if not page["next"]:
                break
            cursor = page["next"]
        assert len(seen) == len(set(seen)) >= 3
        await api.emit([{"type": "page", "data": n} for n in range(3)])
        async with asyncio.timeout(DEADLINE):
            while True:
                rows = await api.deliveries(limit="1")  # follows `next`, row by row
                if len(rows) >= 9:
                    break
                await asyncio.sleep(0.05)
        assert len(rows) == len({(r["webhook_id"], r["event_id"]) for r in rows})


# -- a client that leaves mid-upload ------------------------------------------------------------


async def test_a_client_that_disconnects_mid_upload_is_no_error(daemon: DaemonProcess) -> None:
    out = Output(daemon)
    for path in ("/v1/events", "/v1/webhooks"):
        _, writer = await asyncio.open_connection(*address(daemon))
        head = request("POST", path, AUTH).removesuffix(b"Connection: close\r\n\r\n")
        writer.write(head + b"Content-Length: 10000\r\n\r\n" + b'{"type": "a", "data": "')
        await writer.drain()
        writer.close()  # before the body is complete
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    await still_serving(daemon)
    # The daemon's side of it is logged (at debug) only after it noticed; by now it has
    # answered a later request on another connection, so a line would be there.
    out.assert_quiet()
