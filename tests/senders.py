"""Senders made by a test, on either client (webhookd.senders), all closed at its end."""

from __future__ import annotations

from typing import Any

from webhookd.senders import AttemptSender, HttpClient, build_sender

CLIENTS: list[HttpClient] = ["reqwest", "aiohttp"]


class Senders:
    """`make(**overrides)` builds and starts a sender on `client` with these defaults (and
    build_sender's keyword arguments over them); `close()` closes every one made."""

    def __init__(self, client: HttpClient, **defaults: Any) -> None:
        self.client = client
        self._defaults: dict[str, Any] = {
            "timeout": 5.0,
            "max_response_bytes": 4096,
            "pool_size": 8,
            "user_agent": "webhookd/test",
            **defaults,
        }
        self._made: list[AttemptSender] = []

    async def make(self, **overrides: Any) -> AttemptSender:
        sender = build_sender(self.client, **{**self._defaults, **overrides})
        await sender.start()
        self._made.append(sender)
        return sender

    async def close(self) -> None:
        for sender in self._made:
            await sender.close()
