"""The HTTP POST of one delivery attempt on pyreqwest (Rust reqwest): the default client.

The same contract as :class:`webhookd.sender.Sender` (aiohttp): one POST, no redirect
followed, at most ``max_response_bytes`` of the answer read, every failure an
:class:`~webhookd.attempts.AttemptResult` with the same error texts. It costs about half the
CPU of aiohttp's client per request (bench/README.md, "The HTTP client"), which is most of
what a delivery costs the daemon's event loop.

How the destination guard is kept. reqwest has no resolver hook; a client can only be built
with a static answer, ``ClientBuilder.resolve(name, address, port)``. So a receiver's name
is resolved and checked here, in Python, by :class:`webhookd.proxy.Pinner` over
:class:`webhookd.guard.GuardedResolver` (the rule aiohttp's resolver applies, answers kept
10 s as aiohttp's DNS cache keeps them), and the request goes out on a client whose only
answer for that name is the checked address. The URL keeps the name, so ``Host`` and TLS
(SNI, the certificate's name) are the receiver's. One client per (host, port, client
certificate); a new answer makes a new client, and the one it replaces is closed once its
requests can no longer be running. IP-literal hosts are checked before anything is sent.

What reqwest cannot do, and where the aiohttp sender is used instead: a proxy that keeps the
guard on https (webhookd asks the proxy for the checked address with the name as TLS name;
reqwest takes the TLS name from the URL only), so :func:`webhookd.senders.build_sender`
picks aiohttp whenever ``delivery.proxy`` is set. Differences a receiver can see: reqwest
adds ``accept: */*``, and the reason phrase of an error is the standard one for its status.
"""

from __future__ import annotations

import asyncio
import errno
import http
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    ConnectError,
    PyreqwestError,
    RequestTimeoutError,
    TransportError,
)

from webhookd.attempts import (
    LOCAL_ERRNOS,
    AttemptResult,
    SenderLimits,
    local_error,
    parse_retry_after,
)
from webhookd.guard import DestinationRefused, GuardedResolver, checked_target, parse_ip
from webhookd.network import DeliveryOptions
from webhookd.proxy import Pinner

__all__ = ["ReqwestSender", "describe_error"]

# Clients kept at once; the least recently used beyond it is closed once idle. A client
# costs about 110 KB (its TLS roots) and 4 ms of the event loop to build (measured with
# pyreqwest 0.15.1), so this bounds memory at ~56 MB; a daemon whose receivers span many
# more hosts than this rebuilds clients, and is better served by the aiohttp client.
MAX_CLIENTS = 512
_OS_ERROR = re.compile(r"os error (\d+)")
_ALERT = re.compile(r"received fatal alert: (\w+)")
_RESET_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})
# rustls' words for a handshake that failed (no errno: the peer spoke, but not TLS or not
# with a certificate this client trusts).
_TLS_WORDS = ("tls", "certificate", "handshake", "corrupt message", "alert", "invalid message")


@lru_cache(maxsize=8192)
def _target(url: str) -> tuple[str, int, bool, str | None]:
    """The URL's host and port, whether the host is an IP literal, and the refusal of a
    forbidden one (guard.checked_target; ValueError for a URL that fails its checks)."""
    parsed, refusal = checked_target(url)
    literal = parsed.host is not None and parse_ip(parsed.host) is not None
    return parsed.raw_host or "", parsed.port or 0, literal, refusal


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _failure(error: str, started: float) -> AttemptResult:
    return AttemptResult(None, error, _elapsed_ms(started), "", None)


def _causes(exc: BaseException) -> list[str]:
    details: Any = getattr(exc, "details", None)
    causes: Any = details.get("causes") if isinstance(details, dict) else None
    return [
        str(cause.get("message", cause)) if isinstance(cause, dict) else str(cause)
        for cause in causes or []
    ]


def _innermost(exc: BaseException) -> str:
    """The deepest cause's text on one line (reqwest's own message is generic)."""
    causes = _causes(exc)
    return " ".join((causes[-1] if causes else str(exc) or type(exc).__name__).split())


def os_errno(exc: BaseException) -> int | None:
    """The errno reqwest reports in a cause's text ("... (os error 24)"), or ``None``."""
    for text in reversed([str(exc), *_causes(exc)]):
        found = _OS_ERROR.search(text)
        if found is not None:
            return int(found.group(1))
    return None


def _tls_detail(text: str) -> str:
    """rustls' reason in the words of the aiohttp sender's (OpenSSL's) texts."""
    alert = _ALERT.search(text)
    if alert is not None:  # "received fatal alert: CertificateRequired"
        words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", alert.group(1)).lower()
        return f"the receiver refused the handshake: {words}"
    if "close_notify" in text or "unexpected eof" in text.lower():
        # A receiver that requires a client certificate may hang up without an alert.
        return "the receiver closed the connection during the handshake"
    if "invalid peer certificate" in text or "certificate" in text.lower():
        return f"certificate verify failed: {text}"
    return text


def describe_error(exc: Exception, timeout: float) -> str:
    """aiohttp sender's texts (webhookd.sender.describe_error) for reqwest's errors, read
    out of the errno and the causes' text where reqwest gives no error class."""
    if isinstance(exc, RequestTimeoutError):
        return f"timeout after {timeout}s"
    number = os_errno(exc)
    text = " ".join(_causes(exc)).lower()
    detail = _innermost(exc)
    if number == errno.ECONNREFUSED:
        return "connection refused"
    if number in _RESET_ERRNOS:
        return "connection reset"
    if number == errno.ENETUNREACH:
        return "network unreachable"
    if number == errno.EHOSTUNREACH:
        return "host unreachable"
    if "connection closed before message completed" in text:
        return "connection closed by the server before a response"
    if isinstance(exc, ConnectError):
        if any(word in text for word in _TLS_WORDS):
            return f"TLS error: {_tls_detail(detail)}"
        return f"connection failed: {detail}"
    if "invalid" in text or "parse" in text:
        return f"invalid response: {detail}"
    if isinstance(exc, TransportError):
        return f"network error: {detail}"
    return f"HTTP client error: {detail}"


def _failed(exc: PyreqwestError, timeout: float, started: float) -> AttemptResult:
    number = os_errno(exc)
    if number in LOCAL_ERRNOS:
        return AttemptResult(
            None, local_error(number), _elapsed_ms(started), "", None, local_failure=True
        )
    return _failure(describe_error(exc, timeout), started)


def _build_problem(exc: Exception) -> str:
    """Why a client could not be built. reqwest says only that it found no CA certificate
    when it could not open the files that hold them: if descriptors are what ran out, say
    that, as the aiohttp sender would."""
    number = os_errno(exc)
    if number is None:
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
        except OSError as probe:
            number = probe.errno
    if number in LOCAL_ERRNOS:
        return local_error(number)
    return f"HTTP client error: {_innermost(exc)}"


class ReqwestSender(SenderLimits):
    """Sends delivery attempts over pooled reqwest clients, each pinned to an address the
    guard checked (see the module)."""

    def __init__(
        self,
        *,
        timeout: float,
        max_response_bytes: int,
        allow_private: bool,
        pool_size: int,
        user_agent: str,
        ca_pem: bytes | None = None,
        client_identities: Mapping[str, bytes] | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        super().__init__(
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            allow_private=allow_private,
            pool_size=pool_size,
            user_agent=user_agent,
        )
        self._ca_pem = ca_pem
        self._identities = dict(client_identities or {})
        for name, pem in self._identities.items():
            try:
                ClientBuilder().identity_pem(pem)
            except ValueError as exc:
                raise ValueError(
                    f"tls.client_certificates.{name}: the certificate and key cannot be used "
                    f'by the reqwest client ({exc}); set delivery.http_client = "aiohttp"'
                ) from None
        self._resolver = resolver
        self._pinner: Pinner | None = None
        # (host, port, certificate) -> (pinned address or the literal host, client)
        self._clients: OrderedDict[tuple[str, int, str | None], tuple[str, Client]] = OrderedDict()
        self._retiring: dict[asyncio.Task[None], Client] = {}

    async def start(self) -> None:
        if self._pinner is not None:
            raise RuntimeError("Sender already started")
        # The first client starts reqwest's runtime (a thread of its own, for good): now,
        # while the daemon has descriptors to spare, not at a first attempt that may not.
        await ClientBuilder().build().close()
        inner = self._resolver if self._resolver is not None else DefaultResolver()
        # The name is resolved here either way: the pin needs an address.
        self._pinner = Pinner(inner if self._allow_private else GuardedResolver(inner))

    async def close(self) -> None:
        """Close every client and its pooled connections."""
        clients = [client for _, client in self._clients.values()]
        self._clients.clear()
        for task, client in list(self._retiring.items()):
            task.cancel()
            clients.append(client)
        self._retiring.clear()
        for client in clients:
            await client.close()
        pinner, self._pinner = self._pinner, None
        if pinner is not None:
            await pinner.close()

    def _build(self, host: str, address: str | None, port: int, certificate: str | None) -> Client:
        builder = (
            ClientBuilder()
            .http1_only()
            .max_connections(self._pool_size)
            .pool_max_idle_per_host(self._pool_size)
            # aiohttp's keep-alive: an idle connection kept past a receiver's own keep-alive
            # (often 5-60 s) may be closed by it just as an attempt is sent on it.
            .pool_idle_timeout(timedelta(seconds=15))
            .timeout(timedelta(seconds=self._timeout))
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .default_cookie_store(False)
            .user_agent(self._user_agent)
            # The status decides the outcome: a receiver's sloppy response header must not
            # turn its 200 into a retry (aiohttp's parser is as lenient with responses).
            .http1_allow_obsolete_multiline_headers_in_responses(True)
            .http1_ignore_invalid_headers_in_responses(True)
            .http1_allow_spaces_after_header_name_in_responses(True)
        )
        if address is not None:
            builder = builder.resolve(host, address, port)
        if self._ca_pem is not None:
            builder = builder.add_root_certificate_pem(self._ca_pem)
        if certificate is not None:
            builder = builder.identity_pem(self._identities[certificate])
        return builder.build()

    def _retire(self, client: Client) -> None:
        async def later() -> None:
            # Its requests end within the timeout; then its connections go.
            await asyncio.sleep(self._timeout + 1.0)
            self._retiring.pop(task, None)
            await client.close()

        task = asyncio.get_running_loop().create_task(later())
        self._retiring[task] = client

    def _client(self, host: str, addresses: tuple[str, ...], port: int, cert: str | None) -> Client:
        """The client for this destination, pinned to one of ``addresses`` (none for an IP
        literal). A pin still among the answers is kept: a name whose DNS rotates its
        answers does not make a client (and its connections) anew at every resolution."""
        key = (host, port, cert)
        known = self._clients.get(key)
        if known is not None and (known[0] in addresses or (not addresses and known[0] == host)):
            self._clients.move_to_end(key)
            return known[1]
        address = addresses[0] if addresses else None
        client = self._build(host, address, port, cert)
        if known is not None:
            self._retire(known[1])
        elif len(self._clients) >= MAX_CLIENTS:
            _, (_, oldest) = self._clients.popitem(last=False)
            self._retire(oldest)
        self._clients[key] = (address or host, client)
        return client

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None = None,
    ) -> AttemptResult:
        """POST ``body`` to ``url`` once; every failure is reported in the result."""
        pinner = self._pinner
        if pinner is None:
            raise RuntimeError("Sender.start() has not been called")
        started = time.perf_counter()
        try:
            host, port, literal, refusal = _target(url)
        except ValueError as exc:
            return _failure(f"invalid URL: {exc}", started)
        if refusal is not None and not self._allow_private:
            return _failure(refusal, started)
        timeout = self._timeout
        certificate = None
        request_timeout: timedelta | None = None
        if options is not None:
            applied = options.applied(headers, timeout, self._identities)
            if isinstance(applied, str):
                return _failure(applied, started)
            headers, shorter, certificate = applied
            if shorter is not None:
                timeout = shorter
                request_timeout = timedelta(seconds=timeout)
        addresses: tuple[str, ...] = ()
        if not literal:
            try:
                addresses = await pinner.addresses(host, port)
            except DestinationRefused as exc:
                return _failure(str(exc), started)
            except OSError as exc:
                detail = exc.strerror or str(exc) or type(exc).__name__
                return _failure(f"DNS error: {host}: {detail}", started)
        try:
            client = self._client(host, addresses, port, certificate)
        except (RuntimeError, PyreqwestError) as exc:
            # Building a client reads the system's CA store and may start reqwest's runtime:
            # what fails there is the daemon's (no descriptor, no thread), not the
            # receiver's. The client certificates were checked when the sender was built.
            problem = _build_problem(exc)
            return AttemptResult(None, problem, _elapsed_ms(started), "", None, local_failure=True)
        request = client.post(url)
        # Nothing read ahead of the status: a body that fails after the headers must not
        # take the status with it (the excerpt is read below, chunk by chunk).
        request = request.headers(dict(headers)).body_bytes(body).streamed_read_buffer_limit(0)
        if request_timeout is not None:
            request = request.timeout(request_timeout)
        try:
            async with request.build_streamed() as resp:
                status = resp.status
                location = resp.get_header("location")
                retry_after = resp.get_header("retry-after")
                # A response that has no body (204, 304, a length of 0) is complete with its
                # head: reading it would cost a round trip to reqwest's runtime for nothing
                # (7 % of a bare POST's CPU). The connection goes back to the pool either way.
                if status in (204, 304) or resp.get_header("content-length") == "0":
                    excerpt = ""
                else:
                    excerpt = await self._read_excerpt(resp)
        except PyreqwestError as exc:
            return _failed(exc, timeout, started)
        error: str | None = None
        if 200 <= status < 300:
            pass
        elif 300 <= status < 400:
            where = f" to {location}" if location else ", no Location"
            error = f"redirect not followed ({status}{where})"
        else:
            error = f"HTTP {status} {_reason(status)}".rstrip()
        return AttemptResult(
            status,
            error,
            _elapsed_ms(started),
            excerpt,
            parse_retry_after(retry_after) if retry_after is not None else None,
        )

    async def _read_excerpt(self, resp: Any) -> str:
        """At most max_response_bytes of the body; leaving the stream unread drops the
        connection instead of pooling it (a huge body is never read). A timeout or reset
        while reading keeps what was read: the status already decided the outcome."""
        remaining = self._max_response_bytes
        data = b""
        reader = resp.body_reader
        try:
            # Chunks as they arrive: read(n) waits for n bytes and loses them to a reset.
            while remaining > 0:
                chunk = await reader.read_chunk()
                if not chunk:
                    break
                piece = bytes(chunk)[:remaining]
                data = piece if not data else data + piece
                remaining -= len(piece)
        except PyreqwestError:
            pass
        return data.decode("utf-8", errors="replace")


@lru_cache(maxsize=128)
def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""
