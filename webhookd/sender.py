"""The HTTP POST of one delivery attempt.

One :class:`Sender` owns one shared ``aiohttp.ClientSession`` (a pooled
``TCPConnector``) for the whole daemon. :meth:`Sender.post` sends the body once,
never follows redirects, reads at most ``max_response_bytes`` of the answer and
turns every network or HTTP problem into an :class:`AttemptResult` with a clear
error text; it raises only for programming errors (and cancellation). What the
outcome *means* (delivered, retry, gone) is decided by the caller.

A failure of the daemon's own resources (no file descriptor, no buffer space, no
memory for a socket: EMFILE, ENFILE, ENOBUFS, ENOMEM) is not the receiver's: the
result says so (``local_failure``), and the caller does not count it as an attempt.

A URL stored before webhookd checked hosts strictly (:func:`webhookd.guard.checked_target`)
is checked again here, and one that fails is a failed attempt with a clear error.

Destination safety: unless ``allow_private``, host names are resolved through
:class:`webhookd.guard.GuardedResolver` (checked at connect time, on the address
actually connected to) and IP-literal hosts, which aiohttp never resolves, are
checked here before any connection is opened.
"""

from __future__ import annotations

import errno
import ssl
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from webhookd.attempts import (
    LOCAL_ERRNOS,
    AttemptResult,
    SenderLimits,
    local_error,
    parse_retry_after,
)
from webhookd.guard import DestinationRefused, GuardedResolver, checked_target
from webhookd.network import DeliveryOptions
from webhookd.proxy import Pinner, Proxy, authority, is_literal

__all__ = ["Sender", "describe_error", "local_errno"]

_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _os_detail(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _tls_detail(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    return str(exc) or type(exc).__name__


def _is_reset(exc: OSError) -> bool:
    return isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError) or (
        exc.errno in _RESET_ERRNOS
    )


def local_errno(exc: BaseException) -> int | None:
    """The errno of :data:`LOCAL_ERRNOS` behind ``exc`` (itself, the OSError aiohttp
    wraps in a ClientConnectorError, or its cause), or ``None``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, OSError) and current.errno in LOCAL_ERRNOS:
            return current.errno
        if isinstance(current, aiohttp.ClientConnectorError):
            todo.append(current.os_error)
        todo.append(current.__cause__)
    return None


def _connect_error(exc: aiohttp.ClientConnectorError) -> str:
    os_error = exc.os_error
    if isinstance(os_error, DestinationRefused):
        return str(os_error)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS error: {exc.host}: {_os_detail(os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS error: {_tls_detail(exc.certificate_error)}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError) or isinstance(os_error, ssl.SSLError):
        return f"TLS error: {_tls_detail(os_error)}"
    if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
        return "connection refused"
    if _is_reset(os_error):
        return "connection reset"
    if os_error.errno == errno.ENETUNREACH:
        return "network unreachable"
    if os_error.errno == errno.EHOSTUNREACH:
        return "host unreachable"
    # When several addresses failed differently, aiohappyeyeballs joins their errors.
    return f"connection failed: {_os_detail(os_error)}"


@lru_cache(maxsize=64)
def _client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def _failed(exc: BaseException, timeout: float, started: float) -> AttemptResult:
    local = local_errno(exc)
    if local is not None:
        return AttemptResult(
            None, local_error(local), _elapsed_ms(started), "", None, local_failure=True
        )
    return AttemptResult(None, describe_error(exc, timeout), _elapsed_ms(started), "", None)


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short, clear text for an exception raised while sending a request."""
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"proxy refused the tunnel: HTTP {exc.status} {exc.message}".rstrip()
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"proxy: {_connect_error(exc)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _connect_error(exc)
    if isinstance(exc, TimeoutError):  # also ServerTimeoutError, ConnectionTimeoutError
        return f"timeout after {timeout}s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the server before a response"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"invalid URL: {exc}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid response: {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"invalid response body: {_one_line(str(exc))}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {_tls_detail(exc)}"
    if isinstance(exc, OSError):  # includes aiohttp.ClientOSError
        if _is_reset(exc):
            return "connection reset"
        return f"network error: {_os_detail(exc)}"
    return f"HTTP client error: {str(exc) or type(exc).__name__}"


class Sender(SenderLimits):
    """Sends delivery attempts over shared, pooled aiohttp sessions: one for plain
    deliveries, and one per other option set in use (a client certificate, the proxy), each
    made once and kept for the daemon's life, never one per attempt."""

    def __init__(
        self,
        *,
        timeout: float,
        max_response_bytes: int,
        allow_private: bool,
        pool_size: int,
        user_agent: str,
        ssl_context: ssl.SSLContext | None = None,
        client_contexts: Mapping[str, ssl.SSLContext] | None = None,
        proxy: Proxy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        super().__init__(
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            allow_private=allow_private,
            pool_size=pool_size,
            user_agent=user_agent,
        )
        self._ssl_context = ssl_context
        self._client_contexts = dict(client_contexts or {})
        self._proxy = proxy
        # A stand-in for DNS (tests); None: the system's resolver.
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        # (client certificate, through the proxy) -> its session, made on first use.
        self._sessions: dict[tuple[str | None, bool], aiohttp.ClientSession] = {}
        self._pinner: Pinner | None = None

    def _guarded(self) -> AbstractResolver:
        inner = self._resolver if self._resolver is not None else DefaultResolver()
        return inner if self._allow_private else GuardedResolver(inner)

    def _guarded_or_none(self) -> AbstractResolver | None:
        if self._allow_private and self._resolver is None:
            return None  # aiohttp's own
        return self._guarded()

    def _new_session(self, client_certificate: str | None, proxied: bool) -> aiohttp.ClientSession:
        context = (
            self._client_contexts[client_certificate]
            if client_certificate is not None
            else self._ssl_context
        )
        connector = aiohttp.TCPConnector(
            limit=self._pool_size,
            limit_per_host=0,
            # Through the proxy, the only name aiohttp resolves is the proxy's own (receivers'
            # names are resolved and checked by the Pinner); directly, the guard resolves.
            resolver=self._resolver if proxied else self._guarded_or_none(),
            # None means aiohttp's default context, which verifies certificates.
            ssl=context if context is not None else True,
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # Subscribers' Set-Cookie must not make later deliveries stateful.
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": self._user_agent},
            skip_auto_headers=("Accept", "Accept-Encoding"),
            # Never a proxy from the environment: delivery.proxy is the only one.
            trust_env=False,
            raise_for_status=False,
        )

    async def start(self) -> None:
        """Create the shared session and its connection pool."""
        if self._session is not None:
            raise RuntimeError("Sender already started")
        self._session = self._new_session(None, False)
        self._sessions[(None, False)] = self._session
        if self._proxy is not None:
            self._pinner = Pinner(self._guarded())

    async def close(self) -> None:
        """Close every session and every pooled connection."""
        sessions, self._sessions = list(self._sessions.values()), {}
        self._session = None
        for session in sessions:
            await session.close()
        pinner, self._pinner = self._pinner, None
        if pinner is not None:
            await pinner.close()

    def _session_for(self, client_certificate: str | None, proxied: bool) -> aiohttp.ClientSession:
        key = (client_certificate, proxied)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = self._new_session(client_certificate, proxied)
        return session

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None = None,
    ) -> AttemptResult:
        """POST ``body`` to ``url`` once; every failure is reported in the result.

        ``options``: the webhook's own headers, client certificate and timeout, if any."""
        session = self._session
        if session is None:
            raise RuntimeError("Sender.start() has not been called")
        started = time.perf_counter()
        try:
            target, refusal = checked_target(url)
        except ValueError as exc:
            return AttemptResult(None, f"invalid URL: {exc}", _elapsed_ms(started), "", None)
        if refusal is not None and not self._allow_private:
            return AttemptResult(None, refusal, _elapsed_ms(started), "", None)
        timeout = self._timeout
        if options is not None or self._proxy is not None:
            return await self._post_with(target, body, headers, options, started)
        try:
            resp = await session.post(target, data=body, headers=headers, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError, SSLError
            return _failed(exc, timeout, started)
        return await self._answer(resp, started)

    async def _post_with(
        self,
        target: URL,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None,
        started: float,
    ) -> AttemptResult:
        """The POST of a webhook with options of its own, or through the proxy."""
        timeout = self._timeout
        certificate = None
        kwargs: dict[str, Any] = {}
        if options is not None:
            applied = options.applied(headers, timeout, self._client_contexts)
            if isinstance(applied, str):
                return AttemptResult(None, applied, _elapsed_ms(started), "", None)
            headers, shorter, certificate = applied
            if shorter is not None:
                timeout = shorter
                kwargs["timeout"] = _client_timeout(timeout)
        host = target.raw_host or ""
        proxy = self._proxy
        proxied = proxy is not None and not proxy.bypassed(host.lower())
        session = self._session_for(certificate, proxied)
        if proxied:
            assert proxy is not None and self._pinner is not None
            if not is_literal(host):
                try:
                    address = await self._pinner.address(host, target.port or 0)
                except DestinationRefused as exc:
                    return AttemptResult(None, str(exc), _elapsed_ms(started), "", None)
                except OSError as exc:
                    return AttemptResult(
                        None,
                        f"DNS error: {host}: {_os_detail(exc)}",
                        _elapsed_ms(started),
                        "",
                        None,
                    )
                headers = {**headers, "Host": authority(target)}
                if target.scheme == "https":
                    kwargs["server_hostname"] = host.rstrip(".")
                target = target.with_host(address)
            kwargs["proxy"] = proxy.url
            if proxy.authorization is not None:
                if target.scheme == "https":
                    kwargs["proxy_headers"] = {"Proxy-Authorization": proxy.authorization}
                else:  # the absolute form: the request itself goes to the proxy
                    headers = {**headers, "Proxy-Authorization": proxy.authorization}
        try:
            resp = await session.post(
                target, data=body, headers=headers, allow_redirects=False, **kwargs
            )
        except (aiohttp.ClientError, OSError) as exc:
            return _failed(exc, timeout, started)
        return await self._answer(resp, started)

    async def _answer(self, resp: aiohttp.ClientResponse, started: float) -> AttemptResult:
        try:
            excerpt = await self._read_excerpt(resp)
        except BaseException:
            resp.close()
            raise
        status = resp.status
        if 200 <= status < 300:
            error = None
        elif 300 <= status < 400:
            location = resp.headers.get("Location")
            where = f" to {location}" if location else ", no Location"
            error = f"redirect not followed ({status}{where})"
        else:
            error = f"HTTP {status} {resp.reason}" if resp.reason else f"HTTP {status}"
        retry_after = resp.headers.get("Retry-After")
        return AttemptResult(
            status,
            error,
            _elapsed_ms(started),
            excerpt,
            parse_retry_after(retry_after) if retry_after is not None else None,
        )

    async def _read_excerpt(self, resp: aiohttp.ClientResponse) -> str:
        """Read at most ``max_response_bytes`` of the body, then free the connection.

        The connection goes back to the pool only if the body was read to its end;
        otherwise it is dropped (a huge body is never read). A timeout or reset
        while reading keeps what was read: the status already decided the outcome.
        """
        content = resp.content
        remaining = self._max_response_bytes
        data = b""
        try:
            while remaining > 0 and not content.at_eof():
                chunk = await content.read(remaining)
                if not chunk:
                    break
                data = chunk if not data else data + chunk
                remaining -= len(chunk)
        except (aiohttp.ClientError, OSError):  # OSError covers TimeoutError
            resp.close()
        else:
            if content.at_eof():
                resp.release()
            else:
                resp.close()
        return data.decode("utf-8", errors="replace")
