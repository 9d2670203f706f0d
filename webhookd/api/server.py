"""The API's HTTP server: deadlines for slow or silent clients, a cap on connections, and
answers to malformed requests that never repeat what was sent.

aiohttp's own server keeps a connection that sends nothing, or half a request, for its
keep-alive timeout (an hour by default), takes every connection the kernel hands it, and
answers a malformed header block with the raw header lines (a bearer token among them).
Here every connection gets a :class:`GuardedHandler` from an :class:`ApiSite`:

- `admin.header_timeout`: a new connection must deliver a whole request head (request line
  and headers) within it; so must a kept-alive one, counted from the first byte of its next
  request. `admin.idle_timeout` closes a kept-alive connection that sends nothing;
  `admin.body_timeout` (in `read_body`) bounds the body.
- `admin.max_connections`: past it a new connection is answered 503 and closed at once, so
  the API can never take the file descriptors the workers need for their own sockets.
  Unset, it is half the process's RLIMIT_NOFILE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
from functools import partial
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import (
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from webhookd import logs
from webhookd.config import AdminSettings

log = logs.get("webhookd.api")

# aiohttp's defaults, written out: a request line or one header field up to 8 KiB.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128
BACKLOG = 128
# At most one warning about refused connections in this many seconds.
REFUSAL_LOG_INTERVAL = 10.0

_MALFORMED = (
    (LineTooLong, "a request line or header is too long"),
    (InvalidHeader, "a header is malformed"),
    (BadStatusLine, "the request line is malformed"),
    (PayloadEncodingError, "the body does not match its framing"),
)


def handler_options(admin: AdminSettings) -> dict[str, Any]:
    """Keyword arguments for each connection's aiohttp request handler (and AppRunner)."""
    return {
        "access_log": None,
        "keepalive_timeout": admin.idle_timeout,
        "max_line_size": MAX_LINE_SIZE,
        "max_field_size": MAX_FIELD_SIZE,
        "max_headers": MAX_HEADERS,
    }


def runner_options(admin: AdminSettings) -> dict[str, Any]:
    """Keyword arguments for `web.AppRunner`."""
    return {"handle_signals": False, **handler_options(admin)}


def default_max_connections() -> int:
    """Half the open-file limit: the other half stays for the workers and the database."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft // 2)


def max_connections(admin: AdminSettings) -> int:
    return admin.max_connections or default_max_connections()


class Gate:
    """Counts the API's open connections and turns away those past the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self.refused = 0
        self._unlogged = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL

    def admit(self) -> bool:
        if self.open >= self.cap:
            self.refused += 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._logged_at >= REFUSAL_LOG_INTERVAL:
                log.warning(
                    "API connections refused: admin.max_connections are open",
                    max_connections=self.cap,
                    refused=self._unlogged,
                )
                self._logged_at = now
                self._unlogged = 0
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


_REFUSAL_BODY = json.dumps(
    {
        "error": {
            "code": "too_many_connections",
            "message": "the API has admin.max_connections connections open; try again later",
        }
    }
).encode()
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n" + _REFUSAL_BODY
)


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a deadline for request heads and a connection cap.

    aiohttp counts the request heads it has parsed (`_request_count`); comparing that count
    before and after each chunk of bytes tells a head completed. Responses are counted here
    (`finish_response`). Bytes that arrive while neither a request is being handled nor the
    last request's body is still coming belong to the next head: they start its deadline.
    """

    __slots__ = ("_admitted", "_answered", "_body", "_gate", "_head_timer", "_header_timeout")

    def __init__(self, manager: web.Server, *, gate: Gate, header_timeout: float, **kw: Any):
        super().__init__(manager, **kw)
        self._gate = gate
        self._header_timeout = header_timeout
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._answered = 0
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit():
            # Accepted only to be closed: the descriptor is back at once.
            stream = cast(asyncio.Transport, transport)  # uvloop's are no asyncio subclass
            stream.write(_REFUSAL)
            stream.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._gate.release()
        self._stop_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        body = self._body
        in_last_body = body is not None and not body.is_eof()
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:
            self._stop_head_deadline()
        elif (
            data
            and self._head_timer is None
            and not in_last_body
            and self._request_count == self._answered
        ):
            self._start_head_deadline()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        self._answered += 1
        self._body = request.content
        return await super().finish_response(request, resp, start_time)

    def _start_head_deadline(self) -> None:
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_too_late)

    def _stop_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_late(self) -> None:
        self._head_timer = None
        if self.transport is None or self._request_count != self._answered:
            return  # gone already, or a request is being handled
        log.debug(
            "closing an API connection: no whole request head in admin.header_timeout",
            peer=_peer(self.transport),
            header_timeout=self._header_timeout,
        )
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The error shape for what never reached the application, quoting none of it.

        aiohttp's own answer to a malformed request repeats the offending lines, and its
        log prints them with a traceback: a header block broken after `Authorization`
        would hand the token to stderr and back to whoever sent it.
        """
        if isinstance(exc, HttpProcessingError):
            what = next(
                (text for kind, text in _MALFORMED if isinstance(exc, kind)),
                "the request line or a header breaks HTTP/1.1 syntax",
            )
            log.debug(
                "refused a malformed HTTP request",
                status=status,
                problem=what,
                error=type(exc).__name__,
                peer=_peer(self.transport),
            )
            code, text = "malformed_request", f"malformed HTTP request: {what}"
        else:
            log.error(
                "request failed in the HTTP server",
                status=status,
                error=type(exc).__name__ if exc is not None else None,
                exc_info=exc,
            )
            code = HTTPStatus(status).phrase.lower().replace(" ", "_")
            text = f"{HTTPStatus(status).phrase}; the daemon's log has the details"
        if request.writer.output_size > 0:
            raise ConnectionError("a response is under way; no error answer can follow it")
        response = web.json_response({"error": {"code": code, "message": text}}, status=status)
        response.force_close()
        return response


def _peer(transport: asyncio.BaseTransport | None) -> str | None:
    if transport is None:
        return None
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple):
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "unix socket"


class ApiSite(web.BaseSite):
    """`admin.listen` (host:port or unix:/path), serving through GuardedHandlers."""

    __slots__ = ("_admin", "gate", "listening")

    def __init__(self, runner: web.BaseRunner, admin: AdminSettings) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._admin = admin
        self.gate = Gate(max_connections(admin))
        self.listening = admin.listen
        if self.gate.cap > default_max_connections():
            log.warning(
                "admin.max_connections is above half the open-file limit: idle API "
                "connections could leave deliveries without sockets",
                max_connections=self.gate.cap,
                open_file_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )

    @property
    def name(self) -> str:
        return self.listening

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        factory = partial(
            GuardedHandler,
            server,
            loop=loop,
            gate=self.gate,
            header_timeout=self._admin.header_timeout,
            **handler_options(self._admin),
        )
        address = self._admin.address()
        if isinstance(address, str):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
            self._server = await loop.create_unix_server(factory, address, backlog=self._backlog)
            os.chmod(address, 0o660)
            self.listening = f"unix:{address}"
        else:
            host, port = address
            self._server = await loop.create_server(
                factory, host, port, reuse_address=True, backlog=self._backlog
            )
            sockets = self._server.sockets
            if sockets:  # the bound port, for port 0 in tests
                bound = sockets[0].getsockname()
                self.listening = f"{bound[0]}:{bound[1]}"
        log.info(
            "API limits",
            max_connections=self.gate.cap,
            header_timeout=self._admin.header_timeout,
            idle_timeout=self._admin.idle_timeout,
            body_timeout=self._admin.body_timeout,
        )
