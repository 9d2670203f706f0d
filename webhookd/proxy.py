"""The egress proxy: `delivery.proxy` (or `proxy_file`) and `delivery.no_proxy`.

Every attempt to a host not in `no_proxy` goes through an HTTP forward proxy: `CONNECT` for
https, the absolute form for http. The proxy never resolves a receiver's name: webhookd
resolves it itself, through the destination guard (:class:`webhookd.guard.GuardedResolver`
unless private destinations are allowed), and asks the proxy for the checked address only,
with the name kept in the `Host` header and, on https, as the name the receiver's certificate
is verified against. A proxy that resolved names itself could be steered to a private address
by whoever controls a webhook's DNS.
"""

from __future__ import annotations

import base64
import socket
import time
from dataclasses import dataclass
from urllib.parse import unquote

from aiohttp.abc import AbstractResolver
from yarl import URL

from webhookd.guard import parse_ip

__all__ = ["Proxy", "authority", "parse_proxy"]

# How long a checked answer is used before the name is resolved again (aiohttp's own
# DNS cache keeps answers as long).
ANSWER_TTL = 10.0
MAX_ANSWERS = 4096


@dataclass(frozen=True, slots=True)
class Proxy:
    url: URL  # http://host:port, without credentials
    authorization: str | None  # the Proxy-Authorization header's value, if credentials
    no_proxy: tuple[str, ...]  # lower-case hosts and domains; "*" is every host

    def bypassed(self, host: str) -> bool:
        """Whether `host` (a URL's host, lower case) is reached directly."""
        host = host.rstrip(".").strip("[]")
        for entry in self.no_proxy:
            if entry == "*" or host == entry or host.endswith("." + entry):
                return True
        return False

    def __repr__(self) -> str:  # never the credentials
        return f"Proxy({str(self.url)!r}, no_proxy={self.no_proxy!r})"


def parse_proxy(url: str, no_proxy: list[str]) -> Proxy:
    """A checked proxy URL (see config.check_proxy_url) and the no_proxy entries."""
    parsed = URL(url)
    authorization = None
    if parsed.raw_user is not None:
        pair = f"{unquote(parsed.raw_user)}:{unquote(parsed.raw_password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    bare = URL.build(scheme="http", host=parsed.raw_host or "", port=parsed.port)
    entries = tuple(
        entry.strip().lower().removeprefix("*.").lstrip(".").rstrip(".").strip("[]")
        for entry in no_proxy
        if entry.strip()
    )
    return Proxy(bare, authorization, entries)


def authority(target: URL) -> str:
    """The `Host` header of `target` as written (name and any explicit port)."""
    host = target.raw_host or ""
    port = target.explicit_port
    return host if port is None else f"{host}:{port}"


class Pinner:
    """Resolves receivers' names through `resolver` (the guard's, unless private addresses
    are allowed), keeping each checked answer for ANSWER_TTL seconds."""

    def __init__(self, resolver: AbstractResolver) -> None:
        self._resolver = resolver
        self._answers: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}

    async def addresses(self, host: str, port: int) -> tuple[str, ...]:
        """Every address of `host` that the resolver allows, in its order; raises what it
        raises (an OSError, DestinationRefused for a guard's refusal)."""
        now = time.monotonic()
        known = self._answers.get((host, port))
        if known is not None and known[0] > now:
            return known[1]
        results = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        found = tuple(dict.fromkeys(result["host"] for result in results))
        if len(self._answers) >= MAX_ANSWERS:
            self._answers.clear()
        self._answers[(host, port)] = (now + ANSWER_TTL, found)
        return found

    async def address(self, host: str, port: int) -> str:
        """The first address of :meth:`addresses`."""
        return (await self.addresses(host, port))[0]

    async def close(self) -> None:
        await self._resolver.close()


def is_literal(host: str) -> bool:
    return parse_ip(host) is not None
