"""`python -m tests.fenced_daemon run --config PATH`: webhookd with its only way out fenced.

For property-based runs that register whatever URLs a generator makes up (tests/test_openapi.py):
every delivery attempt (the workers' and `POST /v1/webhooks/{id}/test`'s) goes through
the `post` of the daemon's one outbound HTTP client, `ReqwestSender` or `Sender` (aiohttp).
Here both are wrapped so that an attempt
reaches the network only if its URL's host and port are one of the loopback addresses listed
in $WEBHOOKD_TEST_FENCE ("127.0.0.1:PORT,..."); any other is answered at once as a failed
attempt, before any name is resolved or any socket opened. Generated host names are never
looked up (the fence comes first), and `socket.getaddrinfo` refuses every name in this
process too, in case another path ever appears.

Everything else is the real daemon: the API, the store, the workers, the scanner.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

from yarl import URL

from webhookd import reqwest_sender, sender
from webhookd.attempts import AttemptResult
from webhookd.cli import main
from webhookd.network import DeliveryOptions

FENCE_ERROR = "refused by the test fence: not an allowed loopback receiver"


def _allowed() -> frozenset[tuple[str, int]]:
    allowed: set[tuple[str, int]] = set()
    for item in os.environ.get("WEBHOOKD_TEST_FENCE", "").split(","):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not ipaddress.ip_address(host.strip("[]")).is_loopback:
            raise SystemExit(f"WEBHOOKD_TEST_FENCE: {item!r} is not a loopback address")
        allowed.add((host.strip("[]"), int(port)))
    return frozenset(allowed)


def install() -> None:
    """Fence this process. Only ever called as __main__: importing this module (for
    FENCE_ERROR) must leave the importing process, e.g. pytest's in-process daemons, alone."""
    allowed = _allowed()
    getaddrinfo = socket.getaddrinfo

    def fence(cls: Any) -> None:
        post = cls.post

        async def fenced_post(
            self: Any,
            url: str,
            body: bytes,
            headers: Mapping[str, str],
            options: DeliveryOptions | None = None,
        ) -> AttemptResult:
            try:
                parsed = URL(url)
                target = (parsed.host or "", parsed.port or 0)
            except (ValueError, TypeError):
                target = ("", 0)
            if target not in allowed:
                return AttemptResult(None, FENCE_ERROR, 0.0, "", None)
            result: AttemptResult = await post(self, url, body, headers, options)
            return result

        cls.post = fenced_post

    def no_names(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None:
            try:
                ipaddress.ip_address(str(name).split("%")[0])
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "refused by the test fence") from None
        return getaddrinfo(host, *args, **kwargs)

    fence(sender.Sender)
    fence(reqwest_sender.ReqwestSender)
    socket.getaddrinfo = no_names


if __name__ == "__main__":
    install()
    sys.exit(main())
