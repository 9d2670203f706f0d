"""Webhook receivers for tests: real servers on 127.0.0.1, port chosen by the OS.

* :class:`Recorder` — a well-behaved aiohttp receiver that records every request
  and answers with a configurable status, headers and body (plain HTTP or TLS).
* :class:`RawServer` — an ``asyncio.start_server`` server driven by a handler
  coroutine, for misbehaving receivers (resets, silence, trickling, garbage).
  Ready-made handlers are below it.

Both are async context managers and expose ``url`` (``http(s)://127.0.0.1:<port>``).
Nothing here sleeps to synchronise: waiters use events with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict, CIMultiDictProxy

DEFAULT_DEADLINE = 5.0


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes
    peer_port: int | None
    """The client's source port: equal ports mean a reused (pooled) connection."""


@dataclass
class Reply:
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


class Served:
    """An async context manager around `start` and `close`."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class HandlerReceiver(Served):
    """An aiohttp server on 127.0.0.1 that answers every POST to /{name} with the
    subclass's `handle`; for receivers that count or time what arrives."""

    url = ""
    _runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Recorder(Served):
    """An aiohttp receiver recording every request on any path and method.

    ``reply`` (changeable between requests) is what every request gets, unless a
    per-path reply was set with :meth:`reply_on`.
    """

    def __init__(
        self,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        ssl_context: ssl.SSLContext | None = None,
        port: int = 0,
    ) -> None:
        self.reply = Reply(status, dict(headers or {}), body)
        self.requests: list[RecordedRequest] = []
        self._by_path: dict[str, Reply] = {}
        self._ssl_context = ssl_context
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = port

    def reply_on(self, path: str, reply: Reply) -> None:
        self._by_path[path] = reply

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url_for(self, path: str, *, host: str = "127.0.0.1") -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path_qs,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
                peer_port=peer[1] if peer else None,
            )
        )
        async with self._changed:
            self._changed.notify_all()
        reply = self._by_path.get(request.path, self.reply)
        return web.Response(status=reply.status, headers=dict(reply.headers), body=reply.body)

    async def wait_for_requests(
        self, count: int, *, deadline: float = DEFAULT_DEADLINE
    ) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests arrived (fails after ``deadline`` s)."""
        async with asyncio.timeout(deadline), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer(Served):
    """A bare TCP server on 127.0.0.1 that runs ``handler`` for each connection.

    ``connections`` counts accepted connections; ``handled`` is set when a handler
    returns or fails. Handler OS errors (e.g. the client going away) are kept in
    ``errors``. Closing the server aborts every open connection.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.errors: list[BaseException] = []
        self.handled = asyncio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            await self._handler(reader, writer)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.errors.append(exc)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self.handled.set()

    async def wait_handled(self, *, deadline: float = DEFAULT_DEADLINE) -> None:
        await asyncio.wait_for(self.handled.wait(), deadline)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


# --- building blocks for RawServer handlers ---------------------------------------


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """Read one HTTP/1.1 request with a Content-Length body: (head, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return head, body


def reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def response_head(status: int = 200, reason: str = "OK", **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def reset_before_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then reset the connection without a byte of answer."""
    await read_request(reader)
    reset(writer)


async def close_before_status(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the request, then close the connection cleanly (FIN) without answering."""
    await read_request(reader)
    writer.close()


async def reset_after_status_line(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Send the status line only (headers never complete), then reset."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    await writer.drain()
    reset(writer)


def reset_after_headers(partial_body: bytes, announced: int) -> Handler:
    """Send complete headers announcing ``announced`` bytes, part of the body, then reset."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response_head(200, content_length=announced) + partial_body)
        await writer.drain()
        reset(writer)

    return handler


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and read the request, then stay silent until the client hangs up."""
    await read_request(reader)
    await reader.read()


def answer(raw: bytes) -> Handler:
    """Read the request and answer ``raw`` bytes verbatim, then close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


@dataclass
class Streamed:
    """What a streaming handler managed to send before the client went away."""

    sent: int = 0
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)


def trickle(
    body: bytes,
    interval: float,
    streamed: Streamed,
    status: int = 200,
    reason: str = "OK",
) -> Handler:
    """Headers plus the first body byte at once, then one byte every ``interval`` s.

    ``interval`` paces the misbehaviour; it is not used to synchronise anything.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response_head(status, reason, content_length=len(body)) + body[:1])
        await writer.drain()
        streamed.sent = 1
        try:
            for i in range(1, len(body)):
                await asyncio.sleep(interval)
                if writer.transport.is_closing() or reader.at_eof():
                    break
                writer.write(body[i : i + 1])
                await writer.drain()
                streamed.sent += 1
        except OSError:
            pass
        streamed.client_gone.set()

    return handler


def endless(total: int, streamed: Streamed, chunk: int = 1 << 16) -> Handler:
    """Announce ``total`` bytes and generate them on the fly until the client leaves."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        block = b"a" * chunk
        writer.write(response_head(200, content_length=total))
        try:
            while streamed.sent < total:
                n = min(chunk, total - streamed.sent)
                writer.write(block[:n])
                await writer.drain()
                streamed.sent += n
        except OSError:
            streamed.client_gone.set()
            return
        # Everything was sent: see whether the client stays or leaves.
        with contextlib.suppress(OSError):
            await reader.read()
        streamed.client_gone.set()

    return handler


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class FakeResolver(AbstractResolver):
    """A DNS stand-in answering fixed addresses per host name."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.closed = False
        self.queries: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.queries.append(host)
        if host not in self.answers:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        self.closed = True
