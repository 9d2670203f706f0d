"""A receiver that stops answering gets one attempt at a time: from the daemon's pool, not
only from the store's cap; on both engines.

The moment that decides is forced, not waited for: the receiver holds the first round
of attempts (the webhook's full share) open, then hangs up on all of them at once
without an answer. Those outcomes share one transaction, and a claim that the pool
asked before it knew the receiver silent (the scanner's and workers' polls are long, so
that claim is still waiting in the DuckDB writer) comes back in that transaction with a
full share of the rows due. Only the pool's rule keeps it to one attempt: the rows
beyond it go back to pending. Later attempts get no answer either; each must begin
after the one before it ended.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from tests.conftest import Api, make_settings, running
from tests.receivers import RawServer, read_request
from tests.test_isolation import most_open_at_once
from tests.test_ordering_and_limits import database

SHARE = 4  # delivery.per_webhook_concurrency
LATER = 2  # attempts after the first round that the test watches
DEADLINE = 30.0  # bounds a wait only a broken daemon runs into


class Silent:
    """Answers nothing. Hangs up on the first SHARE connections when `hang_up` is set;
    holds later ones until the daemon gives up (its timeout). Keeps each connection's
    [opened, closed] (monotonic; closed is inf while open)."""

    def __init__(self) -> None:
        self.spans: list[list[float]] = []
        self.hang_up = asyncio.Event()
        self.changed = asyncio.Condition()
        self.server = RawServer(self.handle)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        span = [loop.time(), math.inf]
        self.spans.append(span)
        first_round = len(self.spans) <= SHARE
        async with self.changed:
            self.changed.notify_all()
        try:
            await read_request(reader)
            if first_round:
                await self.hang_up.wait()  # RawServer aborts the connection: no answer
            else:
                await reader.read()  # until the client gives up
        finally:
            span[1] = loop.time()

    async def wait_for_connections(self, count: int) -> None:
        async with asyncio.timeout(DEADLINE), self.changed:
            await self.changed.wait_for(lambda: len(self.spans) >= count)


async def test_a_receiver_that_stops_answering_gets_one_attempt_at_a_time(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        database=database(engine, request),
        scanner={"poll_interval": "2s"},
        delivery={
            "workers": 16,
            "per_webhook_concurrency": SHARE,
            "timeout": "2s",
            "lease": "30s",
            "max_attempts": 5,
            "retry_schedule": ["100ms"],
            "jitter": 0,
        },
        shutdown={"grace": "1s"},
    )
    rx = Silent()
    await rx.server.start()
    try:
        async with running(settings) as d, Api(d.url) as api:
            await api.create_webhook(rx.server.url + "/silent")
            await api.emit([{"type": "load", "data": {"n": i}} for i in range(3 * SHARE)])
            await rx.wait_for_connections(SHARE)
            rx.hang_up.set()
            await rx.wait_for_connections(SHARE + LATER)
            spans = [list(s) for s in rx.spans]
            await rx.server.close()
    finally:
        await rx.server.close()
    first_round, later = spans[:SHARE], spans[SHARE:]
    assert most_open_at_once(first_round) == SHARE
    assert all(s[0] >= max(f[1] for f in first_round) for s in later), spans
    assert most_open_at_once(later) == 1, spans
