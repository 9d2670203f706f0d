"""A client of the daemon's HTTP API, for tests and the bench: one aiohttp session, the
bearer token on every request, loopback addresses only."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp

from tests.kit.procs import KitError

TOKEN = "test-admin-token-0123456789abcdef"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class ApiError(KitError):
    """The API answered other than 2xx where a success was required (`Api.ok`)."""


def loopback(url: str) -> str:
    """`url`, if it names this machine; the kit never sends a request anywhere else."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK and not (host or "").startswith("127."):
        raise KitError(f"refusing a non-loopback address {url!r}")
    return url


class Api:
    """The daemon's API at `base` ("http://127.0.0.1:PORT").

    Use it as `async with Api(url) as api`, or call `close()`; the session opens on the first
    request. `connections` caps the connections kept open at once (aiohttp's default: 100);
    `timeout` bounds each request in seconds (None: aiohttp's default)."""

    def __init__(
        self,
        base: str,
        token: str = TOKEN,
        *,
        connections: int = 100,
        timeout: float | None = None,
    ) -> None:
        self.base = loopback(base)
        self.token = token
        self._connections = connections
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            if self._timeout is None:
                self._session = aiohttp.ClientSession(connector=connector)
            else:
                timeout = aiohttp.ClientTimeout(total=self._timeout)
                self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def text(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """The status and the body as text: `body` is sent as JSON, `raw` as it is."""
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self._client().request(
            method, self.base + path, data=data, headers=headers, params=params
        ) as resp:
            return resp.status, await resp.text()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """The status and the body parsed as JSON (the text itself if it is not JSON)."""
        status, text = await self.text(method, path, body, raw=raw, token=token, params=params)
        try:
            return status, json.loads(text) if text else None
        except ValueError:
            return status, text

    async def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """`request`, whose status must be 2xx (else ApiError); the parsed body."""
        status, payload = await self.request(method, path, body, **kw)
        if not 200 <= status < 300:
            raise ApiError(f"{method} {path}: {status} {payload}")
        return payload

    async def create_webhook(self, url: str, **fields: Any) -> dict[str, Any]:
        created: dict[str, Any] = await self.ok("POST", "/v1/webhooks", {"url": url, **fields})
        return created

    async def emit(self, events: Any) -> list[str]:
        payload = await self.ok("POST", "/v1/events", events)
        ids: list[str] = payload["ids"]
        return ids

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.ok("GET", "/v1/status")
        return result

    async def deliveries(self, **params: str) -> list[dict[str, Any]]:
        """Every delivery the listing gives for `params`, page after page."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"limit": "1000", **params}
            if cursor:
                query["cursor"] = cursor
            page = await self.ok("GET", "/v1/deliveries", params=query)
            items.extend(page["items"])
            cursor = page["next"]
            if not cursor:
                return items

    async def wait_status(
        self, expected: Mapping[str, int], *, deadline: float = 15.0, **params: str
    ) -> list[dict[str, Any]]:
        """Poll deliveries until the counts by status are as expected."""
        end = time.monotonic() + deadline
        while True:
            items = await self.deliveries(**params)
            counts: dict[str, int] = {}
            for item in items:
                counts[item["status"]] = counts.get(item["status"], 0) + 1
            if counts == dict(expected):
                return items
            if time.monotonic() > end:
                raise KitError(f"deliveries are {counts}, expected {dict(expected)}")
            await asyncio.sleep(0.02)

    async def metrics_text(self) -> str:
        """GET /metrics (Prometheus text exposition, same bearer token): the raw text."""
        status, text = await self.text("GET", "/metrics")
        if not 200 <= status < 300:
            raise ApiError(f"GET /metrics: {status} {text[:200]}")
        return text

    async def delivered_attempts(self) -> float | None:
        """The daemon's in-memory count of successful attempts: the sum of the samples
        webhookd_attempts_total{outcome="delivered"} of GET /metrics (over every
        status_class). None if the daemon exposes no such counter."""
        from prometheus_client.parser import text_string_to_metric_families

        total: float | None = None
        for family in text_string_to_metric_families(await self.metrics_text()):
            # The parser names a counter's family without "_total"; accept either.
            if family.name not in ("webhookd_attempts", "webhookd_attempts_total"):
                continue
            total = total or 0.0
            for sample in family.samples:
                if (
                    sample.name == "webhookd_attempts_total"
                    and sample.labels.get("outcome") == "delivered"
                ):
                    total += sample.value
        return total

    async def get_json(self, url: str) -> Any:
        """GET a JSON document from another loopback server (a receiver), without the token."""
        async with self._client().get(loopback(url)) as resp:
            return await resp.json()
