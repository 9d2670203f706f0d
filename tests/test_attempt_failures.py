"""Attempts that fail inside webhookd (issue 15, items 1 and 2).

* Any exception during an attempt (a bug, a secret that no longer decodes, a stored id
  no header can carry) is a failed attempt like any other: recorded with its error,
  counted, retried, finally dead. Cancellation (shutdown) still propagates.
* A failure of the daemon's own resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) is not the
  receiver's: the row goes back to pending without spending an attempt, writes nothing
  to the log (which auto-disable reads), and the error is logged once per episode.

Real parts throughout: a DuckDB file, receivers on 127.0.0.1, real EMFILE (the soft
RLIMIT_NOFILE lowered to the descriptors in use, in this process or in a daemon's).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import pickle
import resource
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from aiohttp.client_reqrep import ConnectionKey

import webhookd.workers
from tests.conftest import Api, DaemonProcess, write_config
from tests.pools import pool_for
from tests.receivers import Recorder, unused_port
from webhookd.attempts import AttemptResult
from webhookd.events import parse_event
from webhookd.metrics import Metrics
from webhookd.network import DeliveryOptions
from webhookd.sender import Sender, local_errno
from webhookd.senders import HttpClient, build_sender
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import Claim, DeliveryFilter, Outcome
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.records import utcnow
from webhookd.workers import RetryPolicy, WorkerPool, decide

DEADLINE = 20.0
EMFILE_ERROR = "local resource exhausted: Too many open files (EMFILE)"


# --- helpers -------------------------------------------------------------------------


@contextlib.contextmanager
def descriptors_exhausted() -> Iterator[None]:
    """This process out of file descriptors: the soft limit lowered to what is in use,
    the rest filled; everything freed and restored on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, in_use + 16), hard))
    held: list[int] = []
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(OSError) as info:
            socket.socket()
        assert info.value.errno == errno.EMFILE
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def starve(pid: int) -> Callable[[], None]:
    """Process `pid` out of file descriptors: its soft limit lowered to its lowest free
    descriptor number, so that every new one fails with EMFILE. Returns the undo."""
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    used = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    lowest_free = next(n for n in itertools.count() if n not in used)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    return lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


async def poll(check: Callable[[], Awaitable[Any]], what: str, deadline: float = DEADLINE) -> Any:
    """Call `check` until it returns something true; fail after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DuckDBStore]:
    s = DuckDBStore(tmp_path / "q.duckdb")
    await s.open()
    yield s
    await s.close()


async def one_claim(store: DuckDBStore, url: str, event_id: str = "evt_1") -> Claim:
    hooks = await store.list_webhooks(10, None)
    if not hooks.items:
        await store.create_webhook(url, [], new_secret(), "")
    now = datetime.now().astimezone()
    await store.ingest([parse_event({"id": event_id, "type": "t", "data": {}}, 0, now)])
    await store.scan(500)
    (claim,) = await store.claim(10, 8, 30)
    return claim


async def row_of(store: DuckDBStore, event_id: str = "evt_1") -> dict[str, Any]:
    page = await store.list_deliveries(DeliveryFilter(event_id=event_id), 10, None)
    (row,) = page.items
    return row


class RaisingSender(Sender):
    """A sender whose POST raises, as a bug inside it would."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(
            timeout=5, max_response_bytes=0, allow_private=True, pool_size=1, user_agent="t"
        )
        self.exc = exc

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None = None,
    ) -> AttemptResult:
        raise self.exc


class AnsweringSender(Sender):
    """A sender that answers a fixed result without touching the network."""

    def __init__(self, result: AttemptResult) -> None:
        super().__init__(
            timeout=5, max_response_bytes=0, allow_private=True, pool_size=1, user_agent="t"
        )
        self.result = result

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        options: DeliveryOptions | None = None,
    ) -> AttemptResult:
        return self.result


async def attempt(pool: WorkerPool, claim: Claim) -> None:
    """One attempt, and its outcome durable."""
    await pool._attempt(claim)
    await asyncio.gather(*list(pool._pending_writes))


# --- any exception inside an attempt is a failed attempt -----------------------------


async def test_an_exception_inside_the_sender_is_a_failed_attempt_then_dead(
    store: DuckDBStore,
) -> None:
    pool = pool_for(store, RaisingSender(RuntimeError("boom\nsecond line")), max_attempts=2)
    claim = await one_claim(store, "http://127.0.0.1:9/h")
    await attempt(pool, claim)
    row = await row_of(store)
    error = "internal error: RuntimeError: boom second line"
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, error)
    assert row["lease_until"] is None
    # Not the receiver's silence: the webhook keeps its share of slots.
    assert pool._cap(claim.webhook_id) == 2

    (claim,) = await store.claim(10, 8, 30)  # due at once (schedule [0])
    assert claim.attempt == 2
    await attempt(pool, claim)
    row = await row_of(store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("dead", 2, error)
    log = await store.list_attempts(claim.webhook_id, "evt_1")
    assert [(a["attempt"], a["status_code"], a["error"], a["outcome"]) for a in log] == [
        (1, None, error, "retry"),
        (2, None, error, "dead"),
    ]


async def test_a_secret_that_no_longer_decodes_is_a_failed_attempt(
    store: DuckDBStore, tmp_path: Path
) -> None:
    """A signing failure, for a webhook whose stored secret is damaged: the attempt gets
    an outcome, and nothing is sent unsigned."""
    async with Recorder() as receiver:
        sender = Sender(
            timeout=5, max_response_bytes=0, allow_private=True, pool_size=1, user_agent="t"
        )
        await sender.start()
        try:
            await store.create_webhook(receiver.url + "/h", [], new_secret(), "")
            await store.close()
            con = duckdb.connect(str(tmp_path / "q.duckdb"))
            con.execute("UPDATE webhooks SET secret = 'whsec_not base64'")
            con.close()
            await store.open()
            claim = await one_claim(store, receiver.url + "/h")
            await attempt(pool_for(store, sender), claim)
        finally:
            await sender.close()
        row = await row_of(store)
        assert (row["status"], row["attempts"]) == ("pending", 1)
        assert row["last_error"] == (
            "internal error: ValueError: a secret is 'whsec_' followed by base64"
        )
        assert receiver.requests == []


async def test_an_exception_while_deciding_still_records_an_outcome(
    store: DuckDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> float:
        raise ArithmeticError("schedule broken")

    monkeypatch.setattr(webhookd.workers.backoff, "retry_delay", broken)
    result = AttemptResult(500, "HTTP 500", 3.0, "", None)
    pool = pool_for(store, AnsweringSender(result))
    claim = await one_claim(store, "http://127.0.0.1:9/h")
    before = utcnow()
    await attempt(pool, claim)
    row = await row_of(store)
    assert (row["status"], row["attempts"]) == ("pending", 1)
    assert row["last_error"] == "internal error: ArithmeticError: schedule broken"
    due = datetime.fromisoformat(row["next_attempt_at"].rstrip("Z"))
    assert due >= before + timedelta(seconds=webhookd.workers.FALLBACK_RETRY_DELAY)


async def test_cancellation_still_ends_an_attempt_without_an_outcome(
    store: DuckDBStore,
) -> None:
    """Shutdown cancels unfinished attempts and releases their rows itself."""
    pool = pool_for(store, RaisingSender(asyncio.CancelledError()))
    claim = await one_claim(store, "http://127.0.0.1:9/h")
    with pytest.raises(asyncio.CancelledError):
        await pool._attempt(claim)
    assert not pool._pending_writes
    row = await row_of(store)
    assert (row["status"], row["attempts"]) == ("inflight", 0)
    assert await store.list_attempts(claim.webhook_id, "evt_1") == []


# --- the daemon's own resources: the sender knows them --------------------------------


@pytest.mark.parametrize("client", ["reqwest", "aiohttp"])
async def test_the_sender_reports_a_real_emfile_as_a_local_failure(client: HttpClient) -> None:
    async with Recorder() as receiver:
        sender = build_sender(
            client, timeout=5, max_response_bytes=0, allow_private=True, pool_size=4, user_agent="t"
        )
        await sender.start()
        try:
            with descriptors_exhausted():
                starved = await sender.post(receiver.url + "/h", b"{}", {})
            fed = await sender.post(receiver.url + "/h", b"{}", {})
        finally:
            await sender.close()
        assert starved.local_failure
        assert (starved.status_code, starved.error) == (None, EMFILE_ERROR)
        assert (fed.status_code, fed.error, fed.local_failure) == (200, None, False)
        assert len(receiver.requests) == 1


def _key() -> ConnectionKey:
    return ConnectionKey("127.0.0.1", 80, False, True, None, None, None)


def _with_cause(number: int) -> BaseException:
    exc = aiohttp.ClientConnectorError(_key(), OSError(None, "Multiple exceptions"))
    exc.__cause__ = OSError(number, os.strerror(number))
    return exc


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
@pytest.mark.parametrize(
    "make",
    [
        lambda n: OSError(n, os.strerror(n)),
        lambda n: aiohttp.ClientOSError(n, os.strerror(n)),
        lambda n: aiohttp.ClientConnectorError(_key(), OSError(n, os.strerror(n))),
        _with_cause,
    ],
    ids=["OSError", "ClientOSError", "ClientConnectorError", "cause"],
)
def test_local_errnos_are_found_wherever_aiohttp_puts_them(
    number: int, make: Callable[[int], BaseException]
) -> None:
    assert local_errno(make(number)) == number


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        aiohttp.ClientConnectorError(_key(), OSError(errno.EHOSTUNREACH, "unreachable")),
        TimeoutError(),
    ],
    ids=repr,
)
def test_the_receivers_failures_are_not_local(exc: BaseException) -> None:
    assert local_errno(exc) is None


@pytest.mark.parametrize("client", ["reqwest", "aiohttp"])
async def test_a_refused_connection_is_still_the_receivers_failure(client: HttpClient) -> None:
    sender = build_sender(
        client, timeout=5, max_response_bytes=0, allow_private=True, pool_size=1, user_agent="t"
    )
    await sender.start()
    try:
        result = await sender.post(f"http://127.0.0.1:{unused_port()}/h", b"{}", {})
    finally:
        await sender.close()
    assert (result.error, result.local_failure) == ("connection refused", False)


# --- a local failure spends no attempt ----------------------------------------------

LOCAL = AttemptResult(None, EMFILE_ERROR, 0.5, "", None, local_failure=True)


@pytest.mark.parametrize("budget_attempt", [1, 8])
def test_decide_puts_a_local_failure_back_unspent_soon(budget_attempt: int) -> None:
    """Even on the last attempt of the budget: it goes back to pending, never dead."""
    claim = Claim("wh", "evt", budget_attempt, budget_attempt, "http://x.example/", (), b"")
    now = datetime(2026, 1, 1)
    policy = RetryPolicy(max_attempts=8, schedule=[3600.0], jitter=0.0)
    outcome = decide(claim, LOCAL, policy, now)
    assert (outcome.status, outcome.spent, outcome.outcome) == (
        Status.PENDING,
        False,
        "local_failure",
    )
    assert outcome.error == EMFILE_ERROR
    assert outcome.next_attempt_at is not None
    assert now + timedelta(seconds=1) <= outcome.next_attempt_at <= now + timedelta(seconds=3)


def test_an_outcome_pickles_with_whether_it_was_spent() -> None:
    now = datetime(2026, 1, 1)
    spent = Outcome("wh", "evt", 1, Status.PENDING, now, now, 1.0, None, "e", "", "retry")
    assert spent.spent
    unspent = replace(spent, spent=False, claimed_until=now)
    for outcome in (spent, unspent):
        assert pickle.loads(pickle.dumps(outcome)) == outcome


async def test_an_unspent_outcome_keeps_the_attempts_and_writes_no_log_row(
    store: DuckDBStore,
) -> None:
    claim = await one_claim(store, "http://127.0.0.1:9/h")
    due = utcnow() + timedelta(seconds=2)
    outcome = replace(
        decide(claim, LOCAL, RetryPolicy(8, [60.0], 0.0), utcnow()), next_attempt_at=due
    )
    await store.record(outcome)
    row = await row_of(store)
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 0, EMFILE_ERROR)
    assert (row["lease_until"], row["last_status_code"], row["last_attempt_at"]) == (
        None,
        None,
        None,
    )
    assert row["next_attempt_at"] == due.isoformat(timespec="microseconds") + "Z"
    assert await store.list_attempts(claim.webhook_id, "evt_1") == []


async def test_spent_and_unspent_outcomes_share_one_transaction(store: DuckDBStore) -> None:
    first = await one_claim(store, "http://127.0.0.1:9/h", "evt_1")
    second = await one_claim(store, "http://127.0.0.1:9/h", "evt_2")
    now = utcnow()
    policy = RetryPolicy(8, [0.0], 0.0)
    failed = decide(first, AttemptResult(500, "HTTP 500", 1.0, "", None), policy, now)
    unspent = decide(second, LOCAL, policy, now)
    before = store.writer_stats[0]
    await asyncio.gather(store.record(failed), store.record(unspent))
    assert store.writer_stats[0] - before == 1
    assert [
        (r["attempts"], r["last_error"])
        for r in [await row_of(store, "evt_1"), await row_of(store, "evt_2")]
    ] == [
        (1, "HTTP 500"),
        (0, EMFILE_ERROR),
    ]
    assert len(await store.list_attempts(first.webhook_id, "evt_1")) == 1
    assert await store.list_attempts(first.webhook_id, "evt_2") == []


async def test_an_unspent_outcome_respects_the_lease_fence(store: DuckDBStore) -> None:
    """An outcome of an earlier claim (rescued, claimed again since) changes nothing."""
    claim = await one_claim(store, "http://127.0.0.1:9/h")
    stale = replace(claim, claimed_until=claim.claimed_until - timedelta(seconds=1))
    await store.record(decide(stale, LOCAL, RetryPolicy(8, [60.0], 0.0), utcnow()))
    row = await row_of(store)
    assert (row["status"], row["last_error"]) == ("inflight", None)


async def test_the_next_claim_after_a_local_failure_has_the_same_attempt_number(
    store: DuckDBStore,
) -> None:
    metrics = Metrics()
    pool = pool_for(store, AnsweringSender(LOCAL), metrics)
    claim = await one_claim(store, "http://127.0.0.1:9/h")
    await attempt(pool, claim)
    assert pool._cap(claim.webhook_id) == 2  # not taken for the receiver's silence
    assert metrics.registry.get_sample_value("webhookd_local_failures_total") == 1
    row = await row_of(store)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    await store.close()
    con = duckdb.connect(str(store.path))
    con.execute(
        "UPDATE webhook_delivery_queue SET next_attempt_at = now()::TIMESTAMP - INTERVAL 1 DAY"
    )
    con.close()
    await store.open()
    (again,) = await store.claim(10, 8, 30)
    assert (again.attempt, again.budget_attempt) == (claim.attempt, claim.budget_attempt) == (1, 1)


# --- the whole daemon out of file descriptors ----------------------------------------


async def test_a_daemon_out_of_file_descriptors_spends_no_attempt_and_delivers_after(
    tmp_path: Path, daemon_process: list[DaemonProcess]
) -> None:
    """Two episodes of EMFILE in a real daemon process (its RLIMIT_NOFILE lowered from
    outside). Each: the event waits pending with 0 attempts and no log row, however many
    times it is tried; the error is logged once; once descriptors are back it is
    delivered as attempt 1. With max_attempts = 2, a counted failure would show as dead."""
    config = write_config(
        tmp_path,
        delivery={"max_attempts": 2, "retry_schedule": ["100ms"]},
        logging={"level": "debug"},
    )
    proc = DaemonProcess(config, tmp_path / "daemon.log")
    daemon_process.append(proc)
    proc.start()
    assert proc.proc is not None

    def lines(event: str) -> list[dict[str, Any]]:
        return [line for line in proc.lines() if line.get("event") == event]

    async with Recorder() as first, Recorder() as second, Api(proc.url) as api:
        hooks = {
            "a": await api.create_webhook(first.url + "/h", event_types=["a"]),
            "b": await api.create_webhook(second.url + "/h", event_types=["b"]),
        }
        for episode, (kind, receiver) in enumerate([("a", first), ("b", second)], start=1):
            wid, event_id = hooks[kind]["webhook_id"], f"evt_{kind}"
            restore = starve(proc.proc.pid)
            try:
                await api.emit({"id": event_id, "type": kind, "data": {}})

                async def tried_thrice(event_id: str = event_id) -> bool:
                    made = [x for x in lines("attempt not made") if x["event_id"] == event_id]
                    return len(made) >= 3

                await poll(tried_thrice, f"three local failures of {event_id}")
                (row,) = await api.deliveries(webhook_id=wid)
                assert row["attempts"] == 0, row
                assert row["status"] in ("pending", "inflight"), row
                assert row["last_error"] == EMFILE_ERROR
                page = await api.ok("GET", f"/v1/deliveries/{wid}/{event_id}/attempts")
                assert page["items"] == []
                assert (
                    len(lines("out of local resources: deliveries wait without spending attempts"))
                    == episode
                )
                assert receiver.requests == []
            finally:
                restore()

            async def delivered(wid: str = wid) -> Any:
                (row,) = await api.deliveries(webhook_id=wid)
                return row if row["status"] == "delivered" else None

            row = await poll(delivered, f"{event_id} delivered")
            assert row["attempts"] == 1
            page = await api.ok("GET", f"/v1/deliveries/{wid}/{event_id}/attempts")
            assert [(a["attempt"], a["status_code"], a["outcome"]) for a in page["items"]] == [
                (1, 200, "delivered")
            ]
            assert [r.headers["webhook-id"] for r in receiver.requests] == [event_id]
            assert len(lines("local resources work again; deliveries resume")) == episode
        metrics = await api.request("GET", "/metrics")
    assert proc.stop() == 0
    counted = [
        line
        for line in str(metrics[1]).splitlines()
        if line.startswith("webhookd_local_failures_total ")
    ]
    assert counted and float(counted[0].split()[1]) >= 6, counted
