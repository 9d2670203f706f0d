"""A prototype of webhookd's sender on pyreqwest (Rust reqwest), for `--scenario client`.

Not webhookd's code: a measurement of what the delivery path would cost on another client,
with the destination guard's rule kept. It answers `post(url, body, headers, options)` with
webhookd's own :class:`webhookd.sender.AttemptResult`, as :class:`webhookd.sender.Sender`
does, so that the bench can put either behind the same call.

How the guard is kept. reqwest has no resolver hook; a client can only be built with a
static pin, `ClientBuilder.resolve(domain, ip, port)`. So the name is resolved and checked
here, in Python, by webhookd's own :class:`webhookd.proxy.Pinner` over
:class:`webhookd.guard.GuardedResolver` (the same rule, the same 10 s answer cache the
proxy path uses), and the request goes out on a client whose only answer for that name is
the checked address. The URL keeps the name, so `Host` and TLS (SNI and the certificate's
name) are the receiver's name, as today. One client per (host, port, pinned address,
client certificate); a new answer after the cache's TTL makes a new client, and the one it
replaces is closed once its requests can no longer be running (after the timeout).
IP-literal hosts are checked here before anything is sent, as the Sender does.

What maps onto pyreqwest's builder (see the module's OPTIONS note for what does not):
timeout (`timeout`, per request for a webhook's shorter one), redirects off
(`follow_redirects(False)`), no cookies (the default), no decompression (so no
Accept-Encoding), the user agent, the extra CA (`add_root_certificate_pem`, added to the
system's trust as `delivery.ca_file` is), a client certificate (`identity_pem`: the
certificate chain and its key in one PEM buffer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import (
    ConnectError,
    ConnectTimeoutError,
    PyreqwestError,
    ReadError,
    RequestTimeoutError,
    WriteError,
)
from yarl import URL

from webhookd.guard import (
    DestinationRefused,
    GuardedResolver,
    check_target,
    forbidden_reason,
    parse_ip,
)
from webhookd.network import DeliveryOptions
from webhookd.proxy import Pinner, Proxy
from webhookd.sender import AttemptResult, parse_retry_after

__all__ = ["OPTIONS", "ReqwestSender"]

OPTIONS = """\
What pyreqwest 0.15 cannot express of the receiver options (webhookd 2026-12-07):
- proxy + guard: the proxy is asked for the URL's host (CONNECT name:port, or the absolute
  form with the name); a `resolve()` pin applies only to connections the client opens itself,
  which with a proxy is the proxy. webhookd asks the proxy for the checked address with the
  name kept in Host and as the TLS name; reqwest has no per-request TLS name apart from the
  URL's host, so https through the proxy to a checked address is not expressible (http could
  put the address in the URL and the name in Host).
- Accept: reqwest adds `accept: */*` to every request (not removable through default_headers);
  aiohttp's session is told to skip it (test_sender_adds_only_the_headers_http_requires).
- one pool limit for the whole daemon: max_connections is per client, and there is one client
  per pinned destination.
- error texts: failures come as ConnectError / ReadError / timeouts with the cause as text;
  "connection refused", "connection reset", TLS reasons and the local-resource errnos
  (EMFILE...) must be read out of strings, not OSError.errno.
- the status line's reason phrase (today "HTTP 503 Service Unavailable" as the receiver wrote
  it): hyper keeps only non-canonical ones; the canonical text is used here.
- an encrypted private key or a key file apart from the certificate: identity_pem takes one
  buffer (webhookd's load_cert_chain takes two files, no password either).
"""

MAX_CLIENTS = 4096


@lru_cache(maxsize=8192)
def _target(url: str) -> tuple[str, int, bool, str | None]:
    """The URL's host and port, whether the host is an IP literal and, for a forbidden one,
    the refusal text (what webhookd.sender checks at send time, with the guard's public
    functions); cached, as the Sender's is, so that a POST parses nothing again.

    Raises ValueError for a URL that is not valid, too long, or whose host is neither a
    valid IP literal nor a valid DNS host name (see guard.check_target)."""
    parsed = URL(url)
    check_target(url, parsed)
    host = parsed.host
    ip = parse_ip(host) if host else None
    reason = forbidden_reason(ip) if ip is not None else None
    refusal = None if reason is None else str(DestinationRefused(str(ip), [(str(ip), reason)]))
    return parsed.raw_host or "", parsed.port or 0, ip is not None, refusal


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _causes(exc: BaseException) -> str:
    details: Any = getattr(exc, "details", None) or {}
    causes = details.get("causes") or [] if isinstance(details, dict) else []
    return " ".join(str(c.get("message", c)) if isinstance(c, dict) else str(c) for c in causes)


def describe_error(exc: PyreqwestError, timeout: float) -> str:
    """webhookd's texts from reqwest's errors, as far as their causes' text tells."""
    text = f"{exc} {_causes(exc)}".lower()
    if isinstance(exc, RequestTimeoutError | ConnectTimeoutError):
        return f"timeout after {timeout}s"
    if isinstance(exc, ConnectError):
        if "refused" in text:
            return "connection refused"
        if "certificate" in text or "tls" in text or "handshake" in text:
            return f"TLS error: {_causes(exc) or exc}"
        if "dns" in text:
            return f"DNS error: {_causes(exc) or exc}"
        return f"connection failed: {_causes(exc) or exc}"
    if isinstance(exc, ReadError | WriteError):
        if "reset" in text or "broken pipe" in text:
            return "connection reset"
        if "closed" in text or "incomplete" in text:
            return "connection closed by the server before a response"
        return f"network error: {_causes(exc) or exc}"
    return f"HTTP client error: {exc}"


class ReqwestSender:
    """webhookd.sender.Sender's interface on pyreqwest, the guard kept (see the module)."""

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
        proxy: Proxy | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        if proxy is not None:
            raise NotImplementedError(f"a proxy with the guard kept: see OPTIONS\n{OPTIONS}")
        self._timeout = float(timeout)
        self._max_response_bytes = max_response_bytes
        self._allow_private = allow_private
        self._pool_size = pool_size
        self._user_agent = user_agent
        self._ca_pem = ca_pem
        self._identities = dict(client_identities or {})
        inner = resolver if resolver is not None else DefaultResolver()
        # The guard's rule unless private destinations are allowed; the name is resolved
        # (and its answer cached for the TTL) either way, since the pin needs an address.
        self._pinner = Pinner(inner if allow_private else GuardedResolver(inner))
        # (host, port, certificate) -> (pinned address, client)
        self._clients: dict[tuple[str, int, str | None], tuple[str, Client]] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for _, client in clients:
            await client.close()
        for task in list(self._retired):
            task.cancel()
        await self._pinner.close()

    def _build(
        self, host: str | None, address: str | None, port: int, certificate: str | None
    ) -> Client:
        builder = (
            ClientBuilder()
            .max_connections(self._pool_size)
            .pool_max_idle_per_host(self._pool_size)
            .timeout(timedelta(seconds=self._timeout))
            .follow_redirects(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .user_agent(self._user_agent)
        )
        if host is not None and address is not None:
            builder = builder.resolve(host, address, port)
        if self._ca_pem is not None:
            builder = builder.add_root_certificate_pem(self._ca_pem)
        if certificate is not None:
            builder = builder.identity_pem(self._identities[certificate])
        return builder.build()

    async def _retire(self, client: Client) -> None:
        # Its requests end within the timeout; then its connections go.
        await asyncio.sleep(self._timeout + 1.0)
        await client.close()

    def _client(self, host: str, address: str | None, port: int, cert: str | None) -> Client:
        key = (host, port, cert)
        known = self._clients.get(key)
        if known is not None and known[0] == (address or host):
            return known[1]
        client = self._build(None if address is None else host, address, port, cert)
        if known is not None:
            task = asyncio.get_running_loop().create_task(self._retire(known[1]))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        elif len(self._clients) >= MAX_CLIENTS:
            raise RuntimeError("too many destinations for the prototype")
        self._clients[key] = (address or host, client)
        return client

    async def destination(self, host: str, port: int) -> str:
        """The address a request to `host` is pinned to: resolved and, unless private
        destinations are allowed, checked by the guard's rule (answers kept for the TTL).
        Raises DestinationRefused for a refusal, OSError for DNS failures."""
        return await self._pinner.address(host, port)

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None = None,
    ) -> AttemptResult:
        if not self._started:
            raise RuntimeError("ReqwestSender.start() has not been called")
        started = time.perf_counter()
        try:
            host, port, literal, refusal = _target(url)
        except ValueError as exc:
            return AttemptResult(None, f"invalid URL: {exc}", _elapsed_ms(started), "", None)
        if refusal is not None and not self._allow_private:
            return AttemptResult(None, refusal, _elapsed_ms(started), "", None)
        timeout = self._timeout
        certificate = None
        request_timeout: timedelta | None = None
        if options is not None:
            if options.headers:
                headers = {**dict(options.headers), **headers}
            if options.timeout is not None and options.timeout < timeout:
                timeout = options.timeout
                request_timeout = timedelta(seconds=timeout)
            certificate = options.client_certificate
            if certificate is not None and certificate not in self._identities:
                return AttemptResult(
                    None,
                    f"client certificate {certificate!r} is not configured "
                    "(tls.client_certificates)",
                    _elapsed_ms(started),
                    "",
                    None,
                )
        address: str | None = None
        if not literal:
            try:
                address = await self.destination(host, port)
            except DestinationRefused as exc:
                return AttemptResult(None, str(exc), _elapsed_ms(started), "", None)
            except OSError as exc:
                detail = exc.strerror or str(exc) or type(exc).__name__
                return AttemptResult(
                    None, f"DNS error: {host}: {detail}", _elapsed_ms(started), "", None
                )
        client = self._client(host, address, port, certificate)
        builder = client.post(url).headers(headers).body_bytes(body)
        if request_timeout is not None:
            builder = builder.timeout(request_timeout)
        try:
            async with builder.build_streamed() as resp:
                status = resp.status
                location = resp.get_header("location")
                retry_after = resp.get_header("retry-after")
                excerpt = await self._read_excerpt(resp)
        except PyreqwestError as exc:
            return AttemptResult(None, describe_error(exc, timeout), _elapsed_ms(started), "", None)
        if 200 <= status < 300:
            error = None
        elif 300 <= status < 400:
            where = f" to {location}" if location else ", no Location"
            error = f"redirect not followed ({status}{where})"
        else:
            error = f"HTTP {status}"
        return AttemptResult(
            status,
            error,
            _elapsed_ms(started),
            excerpt,
            parse_retry_after(retry_after) if retry_after is not None else None,
        )

    async def _read_excerpt(self, resp: Any) -> str:
        """At most max_response_bytes of the body; leaving the stream unread drops the
        connection instead of pooling it (a huge body is never read)."""
        remaining = self._max_response_bytes
        data = b""
        reader = resp.body_reader
        try:
            while remaining > 0:
                chunk = await reader.read(remaining)
                if chunk is None:
                    break
                piece = bytes(chunk)
                if not piece:
                    break
                data += piece
                remaining -= len(piece)
        except (ReadError, RequestTimeoutError):
            pass  # the status already decided the outcome; keep what was read
        return data.decode("utf-8", errors="replace")
