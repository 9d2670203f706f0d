"""A small blocking client for the daemon's API, used by the operator commands.

Stdlib `http.client` only: one connection per request, over TCP (`host:port`, `http(s)://`)
or a unix socket (`unix:/path`), exactly where `admin.listen` says the daemon serves.
Failures are typed so the command line can map them to exit codes:
:class:`Unreachable` (no daemon), :class:`TokenRefused` (401), :class:`ApiFailure` (4xx/5xx).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from webhookd import __version__
from webhookd.config import ConfigError, load_settings

DEFAULT_TIMEOUT = 60.0
# A wildcard listen address is reached through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ClientError(Exception):
    """Any failure talking to the daemon; `str()` is the one line shown to the operator."""


class UsageError(ClientError):
    """A bad --url, --token-file or config: the operator must fix the invocation."""


class Unreachable(ClientError):
    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"cannot reach the daemon at {where} ({reason}) — is it running?")
        self.where = where
        self.reason = reason


class TokenRefused(ClientError):
    def __init__(self) -> None:
        super().__init__(
            "the daemon refused the token (401): check admin.token_file / WEBHOOKD_ADMIN__TOKEN"
        )


class ApiFailure(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"the daemon answered {status} ({code}): {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    """Where the daemon listens: `scheme` is http, https or unix."""

    scheme: str
    host: str = ""
    port: int = 0
    socket_path: str = ""
    prefix: str = ""

    def describe(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.socket_path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{self.port}"
        return where if self.scheme == "http" else f"{self.scheme}://{where}"

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "unix":
            return _UnixConnection(self.socket_path, timeout)
        if self.scheme == "https":
            context = ssl.create_default_context()
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=context
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _tcp(scheme: str, host: str, port: int, prefix: str = "") -> Endpoint:
    return Endpoint(scheme, host=_WILDCARDS.get(host, host), port=port, prefix=prefix)


def parse_url(url: str) -> Endpoint:
    """`http://host:port[/prefix]`, `https://…`, `host:port` or `unix:/path/to.sock`."""
    if url.startswith("unix:"):
        path = url[len("unix:") :]
        if not path:
            raise UsageError(f"--url {url!r}: 'unix:' needs a socket path")
        return Endpoint("unix", socket_path=path)
    split = urlsplit(url if "://" in url else f"http://{url}")
    if split.scheme not in ("http", "https") or not split.hostname:
        raise UsageError(f"--url {url!r}: expected http://host:port, host:port or unix:/path")
    try:
        port = split.port or (443 if split.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"--url {url!r}: the port is not a number from 1 to 65535") from None
    return _tcp(split.scheme, split.hostname, port, split.path.rstrip("/"))


def endpoint_from_listen(address: tuple[str, int] | str) -> Endpoint:
    if isinstance(address, str):
        return Endpoint("unix", socket_path=address)
    host, port = address
    return _tcp("http", host, port)


def read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--token-file: cannot read {path!r} ({exc.strerror})") from None
    if not token:
        raise UsageError(f"--token-file: {path!r} is empty")
    return token


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    strerror = getattr(exc, "strerror", None)
    if isinstance(strerror, str) and strerror:
        return strerror[0].lower() + strerror[1:]
    return str(exc) or type(exc).__name__


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", errors="replace").strip()


def _failure(status: int, payload: Any) -> ClientError:
    if status == 401:
        return TokenRefused()
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return ApiFailure(status, str(error.get("code", "error")), str(error.get("message", "")))
    text = payload if isinstance(payload, str) and payload else "no error message"
    return ApiFailure(status, "error", text[:200])


def segment(value: str) -> str:
    """One path segment, quoted so an id can never change the route."""
    return quote(value, safe="")


class Client:
    """Blocking calls to the API: JSON in, JSON out, typed failures."""

    def __init__(self, endpoint: Endpoint, token: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.endpoint = endpoint
        self._token = token
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        query = {k: v for k, v in (params or {}).items() if v}
        target = self.endpoint.prefix + path + (f"?{urlencode(query)}" if query else "")
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": "application/json",
            "User-Agent": f"webhookd-cli/{__version__}",
        }
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        status, raw = self._exchange(method, target, data, headers)
        payload = _decode(raw)
        if status >= 400:
            raise _failure(status, payload)
        return payload

    def _exchange(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        conn = self.endpoint.connection(self.timeout)
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.endpoint.describe(), _reason(exc)) from None
        finally:
            conn.close()


def connect(
    config: str | None,
    url: str | None = None,
    token_file: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Client:
    """A client for the daemon the config describes; `url` / `token_file` override it.

    With both overrides the config is not read at all.
    """
    endpoint = parse_url(url) if url else None
    token = read_token_file(token_file) if token_file else None
    if endpoint is None or token is None:
        try:
            settings = load_settings(config)
            if token is None:
                token = settings.admin.resolve_token()
        except ConfigError as exc:
            raise UsageError("; ".join(exc.problems)) from None
        if endpoint is None:
            endpoint = endpoint_from_listen(settings.admin.address())
    return Client(endpoint, token, timeout)
