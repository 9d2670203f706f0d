"""A slow or dead webhook holds only its own slots: the others keep being delivered.

Four "black hole" receivers accept the connection, read the request and never answer;
two healthy receivers answer 204. With `per_webhook_concurrency = 2` the black holes can
hold at most 8 of the 16 workers, so every healthy delivery must arrive while the black
holes still hold their very first attempts: none of them has timed out, been recorded
or been retried yet. The proof is structural, not a stopwatch: the test waits for
whichever comes first, the last healthy delivery or a black hole's first hang-up (its
first attempt ending, at the 5 s timeout), and only the first order passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import Api, make_settings, running
from tests.receivers import RawServer, Recorder, read_request

BLACK_HOLES = 4
HEALTHY = 2
EVENTS = 50
PER_WEBHOOK = 2
TEST_DEADLINE = 60.0  # only so that a broken daemon fails the test instead of hanging it


class BlackHole:
    """Counts the connections it holds open now and the most it held at once; `ended` is
    set when the daemon first hangs up on it (an attempt ended: a timeout)."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.ended = asyncio.Event()
        self.server = RawServer(self.handle)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await read_request(reader)
            await reader.read()  # silent until the client hangs up
        finally:
            self.open -= 1
            self.ended.set()


async def test_black_holes_do_not_delay_healthy_webhooks(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        delivery={
            "workers": 16,
            "per_webhook_concurrency": PER_WEBHOOK,
            "timeout": "5s",
            "lease": "30s",
            "max_attempts": 2,
        },
        shutdown={"grace": "1s"},
    )
    holes = [BlackHole() for _ in range(BLACK_HOLES)]
    healthy = [Recorder(status=204) for _ in range(HEALTHY)]
    for server in [h.server for h in holes] + healthy:
        await server.start()
    try:
        async with running(settings) as d, Api(d.url) as api:
            hole_ids = [
                (await api.create_webhook(h.server.url + "/hole"))["webhook_id"] for h in holes
            ]
            for rx in healthy:
                await api.create_webhook(rx.url_for("/ok"))
            started = time.monotonic()
            ids = await api.emit([{"type": "load", "data": {"n": i}} for i in range(EVENTS)])
            assert len(ids) == EVENTS
            arrived = asyncio.ensure_future(
                asyncio.gather(
                    *(rx.wait_for_requests(EVENTS, deadline=TEST_DEADLINE) for rx in healthy)
                )
            )
            hung_up = [asyncio.ensure_future(h.ended.wait()) for h in holes]
            waiters: list[asyncio.Future[Any]] = [arrived, *hung_up]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            elapsed = time.monotonic() - started
            for waiter in hung_up:
                waiter.cancel()
            got = sum(len(rx.requests) for rx in healthy)
            if not arrived.done():
                arrived.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await arrived  # retrieved, so nothing is logged when it is collected
            assert not arrived.cancelled(), (
                f"a black hole's attempt ended (timed out) after {elapsed:.1f}s while only "
                f"{got} of {HEALTHY * EVENTS} healthy deliveries had arrived"
            )
            arrived.result()
            # The moment the last healthy delivery arrived: every black hole still holds its
            # first two attempts and has seen no other connection (no timeout, no retry).
            snapshot = [(h.server.connections, h.open, h.peak) for h in holes]
            print(
                f"\nisolation: {HEALTHY * EVENTS} healthy deliveries arrived in {elapsed:.3f}s "
                f"while {BLACK_HOLES} black holes held {sum(h.open for h in holes)} attempts "
                f"(delivery.timeout 5s)"
            )
            assert snapshot == [(PER_WEBHOOK, PER_WEBHOOK, PER_WEBHOOK)] * BLACK_HOLES, snapshot
            for wid in hole_ids:
                # Claimed rows may wait in the daemon's memory beyond the two attempts running;
                # none has an outcome yet.
                rows = await api.deliveries(webhook_id=wid)
                assert len(rows) == EVENTS
                assert {row["status"] for row in rows} <= {"inflight", "pending"}
                assert all(row["attempts"] == 0 for row in rows)
            await api.wait_status({"delivered": HEALTHY * EVENTS}, status="delivered")
            for rx in healthy:
                assert sorted(r.headers["webhook-id"] for r in rx.requests) == sorted(ids)
            # Hang up on the daemon so that its shutdown does not wait for the timeouts.
            for h in holes:
                await h.server.close()
        assert all(h.peak <= PER_WEBHOOK for h in holes), [h.peak for h in holes]
    finally:
        for server in [h.server for h in holes] + healthy:
            await server.close()


@contextlib.asynccontextmanager
async def serving(
    handler: Any, path: str, *, handler_cancellation: bool = False
) -> AsyncIterator[str]:
    """An aiohttp receiver on loopback running `handler` for POST `path`; yields its URL.
    With `handler_cancellation`, a handler is cancelled when its client hangs up."""
    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1, handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()


class AnswersThenHangs:
    """Answers 204 to its first `answers` requests, then never answers (until `hang` is set).

    `hanging` counts the requests it holds unanswered now; `hung_up` is set when a client
    gives up on one (served with handler_cancellation: the daemon's attempt timed out)."""

    def __init__(self, answers: int) -> None:
        self.answers = answers
        self.answered = 0
        self.hanging = 0
        self.hang = asyncio.Event()
        self.hung_up = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        if self.answered >= self.answers:
            self.hanging += 1
            try:
                await self.hang.wait()
            except asyncio.CancelledError:
                self.hung_up.set()
                raise
            finally:
                self.hanging -= 1
        self.answered += 1
        return web.Response(status=204)


async def test_a_fast_receiver_that_starts_hanging_does_not_stall_others(
    tmp_path: Path,
) -> None:
    """Rows claimed ahead for a receiver that was fast must not hold up other webhooks'
    claims once that receiver stops answering."""
    flaky = AnswersThenHangs(20)  # requests past the first 20 hang until the end
    settings = make_settings(
        tmp_path,
        delivery={"workers": 8, "per_webhook_concurrency": 2, "timeout": "10s", "lease": "5m"},
    )
    try:
        async with (
            serving(flaky.handle, "/flaky", handler_cancellation=True) as flaky_url,
            Recorder(status=204) as healthy,
            running(settings) as d,
            Api(d.url) as api,
        ):
            await api.create_webhook(flaky_url, event_types=["flaky"])
            await api.create_webhook(healthy.url_for("/ok"), event_types=["ok"])
            await api.emit([{"type": "flaky", "data": {"i": i}} for i in range(300)])
            end = time.monotonic() + 15
            while flaky.answered < 20:
                assert time.monotonic() < end, "the flaky receiver never got its 20 requests"
                await asyncio.sleep(0.01)
            # The flaky receiver now hangs with rows claimed ahead for it in memory.
            await api.emit([{"type": "ok", "data": {"i": i}} for i in range(30)])
            # All healthy deliveries arrive while the hung attempts still hang: before the
            # first of them ends (its 10 s timeout). Whichever comes first decides.
            arrived = asyncio.ensure_future(healthy.wait_for_requests(30, deadline=TEST_DEADLINE))
            gave_up = asyncio.ensure_future(flaky.hung_up.wait())
            await asyncio.wait([arrived, gave_up], return_when=asyncio.FIRST_COMPLETED)
            gave_up.cancel()
            if not arrived.done():
                arrived.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await arrived
            assert not flaky.hung_up.is_set(), (
                f"a hung attempt timed out first: {len(healthy.requests)} of 30 healthy "
                "deliveries had arrived"
            )
            assert len(arrived.result()) == 30
            assert flaky.hanging > 0  # the hung attempts are still out
    finally:
        flaky.hang.set()


class Hanger:
    """Never answers; keeps when each connection opened and closed (monotonic seconds)."""

    def __init__(self) -> None:
        self.spans: list[list[float]] = []  # [opened, closed or inf]
        self.server = RawServer(self.handle)
        self.changed = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        span = [time.monotonic(), float("inf")]
        self.spans.append(span)
        async with self.changed:
            self.changed.notify_all()
        try:
            await read_request(reader)
            await reader.read()  # silent until the client hangs up
        finally:
            span[1] = time.monotonic()

    async def wait_for_connections(self, count: int, deadline: float) -> None:
        async with asyncio.timeout(deadline), self.changed:
            await self.changed.wait_for(lambda: len(self.spans) >= count)


def most_open_at_once(spans: list[list[float]]) -> int:
    edges = sorted([(s[0], 1) for s in spans] + [(s[1], -1) for s in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


async def test_a_receiver_that_never_answers_gets_one_attempt_at_a_time(
    tmp_path: Path,
) -> None:
    """Its first round runs at the webhook's full share; once an attempt got no answer,
    the next ones go one at a time, so that a hanging receiver holds one worker."""
    settings = make_settings(
        tmp_path,
        delivery={
            "workers": 16,
            "per_webhook_concurrency": 4,
            "timeout": "1s",
            "lease": "30s",
            "max_attempts": 3,
            "retry_schedule": ["100ms"],
            "jitter": 0,
        },
        shutdown={"grace": "1s"},
    )
    hanger = Hanger()
    await hanger.server.start()
    try:
        async with running(settings) as d, Api(d.url) as api:
            await api.create_webhook(hanger.server.url + "/hole")
            await api.emit([{"type": "load", "data": {"n": i}} for i in range(12)])
            await hanger.wait_for_connections(4 + 3, deadline=TEST_DEADLINE)
            spans = [list(s) for s in hanger.spans]
            await hanger.server.close()
        first_round, later = spans[:4], spans[4:]
        first_hang_up = min(s[1] for s in first_round)
        assert most_open_at_once(first_round) == 4
        assert all(s[0] >= first_hang_up for s in later), spans
        assert most_open_at_once(later) == 1, spans
    finally:
        await hanger.server.close()


async def test_a_receiver_that_answers_again_gets_its_share_back(tmp_path: Path) -> None:
    silent = True
    release = asyncio.Event()  # the hung first requests are never answered
    open_now = 0
    two_at_once = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        nonlocal open_now
        await request.read()
        if silent:
            await release.wait()
        open_now += 1
        if open_now >= 2:
            two_at_once.set()
        try:
            # A short wait for company; one at a time, each request still gets its answer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(two_at_once.wait(), 0.5)
        finally:
            open_now -= 1
        return web.Response(status=204)

    settings = make_settings(
        tmp_path,
        delivery={
            "workers": 8,
            "per_webhook_concurrency": 4,
            "timeout": "1s",
            "lease": "30s",
            "retry_schedule": ["100ms"],
            "jitter": 0,
        },
        shutdown={"grace": "1s"},
    )
    try:
        async with (
            serving(handler, "/back") as url,
            running(settings) as d,
            Api(d.url) as api,
        ):
            await api.create_webhook(url)
            await api.emit([{"type": "load", "data": {"n": i}} for i in range(20)])
            # The first round times out unanswered; from then on the receiver answers.
            end = time.monotonic() + TEST_DEADLINE
            while sum(row["attempts"] for row in await api.deliveries()) < 4:
                assert time.monotonic() < end, "the first round never timed out"
                await asyncio.sleep(0.02)
            silent = False
            await asyncio.wait_for(two_at_once.wait(), 15)
            await api.wait_status({"delivered": 20}, status="delivered", deadline=TEST_DEADLINE)
    finally:
        release.set()


async def test_rows_claimed_ahead_go_back_to_pending_when_the_receiver_stops_answering(
    tmp_path: Path,
) -> None:
    """A fast receiver has rows claimed ahead for it in memory. Once it stops answering it
    gets one attempt at a time, so those rows would wait a timeout each, past their lease:
    they are given back and show as pending."""
    flaky = AnswersThenHangs(20)
    settings = make_settings(
        tmp_path,
        delivery={
            "workers": 8,
            "per_webhook_concurrency": 2,
            "timeout": "1s",
            "lease": "5m",
            "retry_schedule": ["1h"],
        },
        shutdown={"grace": "1s"},
    )
    try:
        async with (
            serving(flaky.handle, "/flaky") as url,
            running(settings) as d,
            Api(d.url) as api,
        ):
            await api.create_webhook(url)
            await api.emit([{"type": "load", "data": {"i": i}} for i in range(300)])
            end = time.monotonic() + 15
            while True:
                counts: dict[str, int] = {}
                for row in await api.deliveries():
                    counts[row["status"]] = counts.get(row["status"], 0) + 1
                # 20 delivered, 2 hung attempts retried in an hour, the rest pending and at
                # most one attempt inflight.
                if counts.get("inflight", 0) <= 1 and counts.get("delivered") == 20:
                    break
                assert time.monotonic() < end, counts
                await asyncio.sleep(0.05)
            assert counts.get("pending", 0) >= 300 - 20 - 1, counts
    finally:
        flaky.hang.set()
