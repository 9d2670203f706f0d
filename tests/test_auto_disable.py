"""Auto-disable as the daemon runs it: its upkeep task, `delivery.disable_after`, a real
receiver that fails every attempt; on both engines.

The webhook must stay active for the whole period after its first failure, and be
disabled once the period has passed. The proof is an order of events, not a stopwatch:
a failed attempt is logged after its receiver saw it, so a read of the webhook made
before that arrival + `disable_after` must find it active, and the webhook's last change
(the disable) must be at least `disable_after` after the first failure it names.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import Api, make_settings, running
from tests.receivers import HandlerReceiver
from tests.test_ordering_and_limits import database

DISABLE_AFTER = 2.0
DEADLINE = 30.0  # bounds a wait only a broken daemon runs into


class AlwaysFailing(HandlerReceiver):
    """Answers 500 to everything; remembers when (monotonic) the first request arrived."""

    def __init__(self) -> None:
        self.first: float | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.first is None:
            self.first = time.monotonic()
        await request.read()
        return web.Response(status=500)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_failing_webhook_stays_active_for_disable_after_then_is_disabled(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        database=database(engine, request),
        delivery={
            "disable_after": f"{DISABLE_AFTER:g}s",
            "retry_schedule": ["100ms"],
            "max_attempts": 1000,
        },
    )
    async with AlwaysFailing() as rx, running(settings) as d, Api(d.url) as api:
        wid = (await api.create_webhook(rx.url + "/failing"))["webhook_id"]
        (event_id,) = await api.emit({"type": "t", "data": {}})
        end = time.monotonic() + DEADLINE
        reads: list[tuple[float, bool]] = []  # (monotonic before the read, active)
        while True:
            asked = time.monotonic()
            webhook = await api.ok("GET", f"/v1/webhooks/{wid}")
            reads.append((asked, webhook["active"]))
            if not webhook["active"]:
                break
            assert time.monotonic() < end, "never auto-disabled"
            await asyncio.sleep(0.02)
        assert rx.first is not None
        period_ends = rx.first + DISABLE_AFTER
        during = [active for asked, active in reads if asked < period_ends]
        assert during and all(during), (
            f"disabled {next(a for a, active in reads if not active) - rx.first:.2f}s after "
            f"the first failure, before disable_after ({DISABLE_AFTER:g}s)"
        )
        assert "every attempt failed" in webhook["disabled_reason"]
        attempts = (await api.ok("GET", f"/v1/deliveries/{wid}/{event_id}/attempts"))["items"]
        first_failure = min(_instant(a["attempted_at"]) for a in attempts)
        waited = (_instant(webhook["updated_at"]) - first_failure).total_seconds()
        assert waited >= DISABLE_AFTER, waited
        assert len(attempts) > 1  # it kept failing through the period: retried, not disabled
