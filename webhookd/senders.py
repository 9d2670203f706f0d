"""Which HTTP client sends the attempts, behind one small interface.

Two implementations keep one contract (a POST, no redirect, a capped excerpt, every failure
an :class:`~webhookd.attempts.AttemptResult` with the same texts): pyreqwest
(:class:`webhookd.reqwest_sender.ReqwestSender`, the default: half the CPU per request) and
aiohttp (:class:`webhookd.sender.Sender`). ``delivery.http_client`` picks one; with
``delivery.proxy`` set it is always aiohttp, the one that can ask the proxy for the checked
address and still verify TLS against the receiver's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

from aiohttp.abc import AbstractResolver

from webhookd.attempts import AttemptResult
from webhookd.config import ConfigError
from webhookd.network import DeliveryOptions
from webhookd.proxy import Proxy
from webhookd.reqwest_sender import ReqwestSender
from webhookd.sender import Sender
from webhookd.tls import Contexts

__all__ = ["AttemptSender", "HttpClient", "build_sender", "client_in_use"]

HttpClient = Literal["reqwest", "aiohttp"]


class AttemptSender(Protocol):
    """What the workers and the API's test send need of a sender."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None = None,
    ) -> AttemptResult: ...


def client_in_use(client: HttpClient, proxy: Proxy | None) -> HttpClient:
    """The client that sends: aiohttp whenever a proxy is configured (see the module)."""
    return "aiohttp" if proxy is not None else client


def build_sender(
    client: HttpClient,
    *,
    timeout: float,
    max_response_bytes: int,
    allow_private: bool,
    pool_size: int,
    user_agent: str,
    contexts: Contexts | None = None,
    proxy: Proxy | None = None,
    resolver: AbstractResolver | None = None,
) -> AttemptSender:
    """A sender on ``client`` (or aiohttp, with a proxy), not yet started; ConfigError for a
    client certificate the client cannot use."""
    contexts = contexts if contexts is not None else Contexts(None, {})
    if client_in_use(client, proxy) == "aiohttp":
        return Sender(
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            allow_private=allow_private,
            pool_size=pool_size,
            user_agent=user_agent,
            ssl_context=contexts.default,
            client_contexts=contexts.clients,
            proxy=proxy,
            resolver=resolver,
        )
    try:
        return ReqwestSender(
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            allow_private=allow_private,
            pool_size=pool_size,
            user_agent=user_agent,
            ca_pem=contexts.ca_pem,
            client_identities=contexts.identities,
            resolver=resolver,
        )
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
