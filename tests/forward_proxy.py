"""A small HTTP forward proxy on 127.0.0.1 for tests: CONNECT tunnels and absolute-form
requests, each recorded.

Where it connects is `route(host, port)`: by default the target itself, which must be
127.0.0.1 or ::1 (nothing here ever connects elsewhere); a test that pins a public-looking
address maps it onto a local receiver instead, so that what webhookd asked the proxy for is
checked without any traffic leaving the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

LOOPBACK = frozenset({"127.0.0.1", "::1"})
Route = Callable[[str, int], tuple[str, int]]


def _loopback_only(host: str, port: int) -> tuple[str, int]:
    if host not in LOOPBACK:
        raise AssertionError(f"the test proxy was asked to connect to {host}")
    return host, port


@dataclass
class Asked:
    method: str
    target: str  # "host:port" for CONNECT, the absolute URL otherwise
    headers: dict[str, str]  # lower-case names


@dataclass
class ForwardProxy:
    route: Route = _loopback_only
    # Answer CONNECT with this status instead of tunnelling (e.g. 403).
    refuse_with: int | None = None
    asked: list[Asked] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        self.asked.append(Asked(method, target, headers))
        if method == "CONNECT":
            if self.refuse_with is not None:
                writer.write(f"HTTP/1.1 {self.refuse_with} Forbidden\r\n\r\n".encode())
                await writer.drain()
                return
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(
                *self.route(host.strip("[]"), int(port))
            )
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            # The absolute form: http://host:port/path; one request per connection.
            rest = target.split("://", 1)[1]
            authority, slash, path = rest.partition("/")
            host, _, port = authority.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(
                *self.route(host.strip("[]"), int(port or 80))
            )
            kept = [
                line
                for line in lines[1:]
                if line
                and line.partition(":")[0].strip().lower()
                not in ("proxy-authorization", "connection", "proxy-connection")
            ]
            up_writer.write(
                "\r\n".join(
                    [f"{method} {slash}{path} {version}", *kept, "Connection: close"]
                ).encode("latin-1")
                + b"\r\n\r\n"
            )
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        up_writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(OSError):
        if writer.can_write_eof():
            writer.write_eof()
