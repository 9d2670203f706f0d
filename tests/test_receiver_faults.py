"""How the daemon records each way a receiver can fail, end to end.

An in-process daemon on a temporary DuckDB file delivers to misbehaving receivers on
127.0.0.1 (tests/receivers.py). For every fault the test reads back what an operator
sees: the queue row (`status`, `attempts`, `last_status_code`, `last_error`), the attempt
log (`/v1/deliveries/{webhook}/{event}/attempts`) and what happens next (retried, dead,
parked, or pushed back by Retry-After).

No connection leaves the loopback: the one name lookup (`*.invalid`) is answered by a
stub that refuses it the way RFC 6761 resolvers must, so no DNS packet is sent.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import Api, make_settings, running
from tests.receivers import (
    Handler,
    RawServer,
    Recorder,
    Streamed,
    endless,
    never_answer,
    reset_after_status_line,
    reset_before_status,
    trickle,
    unused_port,
)

DEADLINE = 20.0
# Two attempts a short step apart: one failure to retry, the next parks it dead.
TWO_TRIES: dict[str, Any] = {"max_attempts": 2, "retry_schedule": ["100ms"]}


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def wait_row(
    api: Api,
    wid: str,
    done: Callable[[dict[str, Any]], bool],
    *,
    deadline: float = DEADLINE,
) -> dict[str, Any]:
    """Poll the queue row of the only event sent to `wid` until `done(row)` holds."""
    end = time.monotonic() + deadline
    row: dict[str, Any] | None = None
    while True:
        items = await api.deliveries(webhook_id=wid)
        if items:
            (row,) = items
            if done(row):
                return row
        if time.monotonic() > end:
            raise AssertionError(f"the delivery never got there; last seen: {row}")
        await asyncio.sleep(0.02)


def finished(row: dict[str, Any]) -> bool:
    return row["status"] in ("delivered", "dead", "parked")


async def log_of(api: Api, row: dict[str, Any]) -> list[dict[str, Any]]:
    page = await api.ok("GET", f"/v1/deliveries/{row['webhook_id']}/{row['event_id']}/attempts")
    items: list[dict[str, Any]] = page["items"]
    return items


def summary(log: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(a["attempt"], a["status_code"], a["error"], a["outcome"]) for a in log]


async def deliver_one(
    tmp_path: Path,
    url: str | Callable[[], str],
    delivery: Mapping[str, Any],
    done: Callable[[dict[str, Any]], bool] = finished,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """One webhook, one event: (queue row once `done`, its attempt log, the webhook)."""
    settings = make_settings(tmp_path, delivery=dict(delivery))
    async with running(settings) as d, Api(d.url) as api:
        hook = await api.create_webhook(url() if callable(url) else url)
        await api.emit({"type": "fault.test", "data": {"n": 1}})
        row = await wait_row(api, hook["webhook_id"], done)
        log = await log_of(api, row)
        shown = await api.ok("GET", f"/v1/webhooks/{hook['webhook_id']}")
    return row, log, shown


def assert_retried_then_dead(
    row: dict[str, Any], log: list[dict[str, Any]], code: int | None, error: str
) -> None:
    """A retryable failure: attempt 1 scheduled a retry, attempt 2 used the budget up."""
    assert (row["status"], row["attempts"]) == ("dead", 2), row
    assert (row["last_status_code"], row["last_error"]) == (code, error), row
    assert row["next_attempt_at"] is None and row["lease_until"] is None
    assert summary(log) == [(1, code, error, "retry"), (2, code, error, "dead")]
    assert all(a["duration_ms"] >= 0 for a in log)


# --- the network fails before any HTTP status -----------------------------------------


async def test_connection_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{unused_port()}/h"
    row, log, _ = await deliver_one(tmp_path, url, TWO_TRIES)
    assert_retried_then_dead(row, log, None, "connection refused")
    assert all(a["response_excerpt"] == "" for a in log)


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        pytest.param(reset_before_status, "connection reset", id="reset-before-status"),
        pytest.param(reset_after_status_line, "connection reset", id="reset-after-status-line"),
    ],
)
async def test_reset_connection(tmp_path: Path, handler: Handler, error: str) -> None:
    async with RawServer(handler) as server:
        row, log, _ = await deliver_one(tmp_path, server.url + "/h", TWO_TRIES)
    assert_retried_then_dead(row, log, None, error)
    assert server.connections == 2  # each attempt on a fresh connection


async def test_receiver_that_never_answers_times_out(tmp_path: Path) -> None:
    delivery = {**TWO_TRIES, "timeout": "500ms", "lease": "30s"}
    async with RawServer(never_answer) as server:
        row, log, _ = await deliver_one(tmp_path, server.url + "/h", delivery)
        await server.wait_handled()  # the daemon hung up, it did not wait for ever
    assert_retried_then_dead(row, log, None, "timeout after 0.5s")
    assert server.connections == 2


BODY_TOO_SLOW = b"0123456789" * 100  # 20 s at one byte every 20 ms, timeout is 0.5 s


async def test_body_trickled_past_the_timeout_keeps_a_2xx_status(tmp_path: Path) -> None:
    streamed = Streamed()
    delivery = {**TWO_TRIES, "timeout": "500ms"}
    async with RawServer(trickle(BODY_TOO_SLOW, 0.02, streamed)) as server:
        row, log, _ = await deliver_one(tmp_path, server.url + "/h", delivery)
        await asyncio.wait_for(streamed.client_gone.wait(), DEADLINE)
    # The status line and headers arrived in time: the status decides, and it is 2xx.
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 200)
    assert row["last_error"] is None
    assert summary(log) == [(1, 200, None, "delivered")]
    excerpt = log[0]["response_excerpt"].encode()
    assert excerpt and BODY_TOO_SLOW.startswith(excerpt) and len(excerpt) < len(BODY_TOO_SLOW)
    assert server.connections == 1


async def test_body_trickled_past_the_timeout_keeps_a_5xx_status(tmp_path: Path) -> None:
    streamed = Streamed()
    delivery = {**TWO_TRIES, "timeout": "500ms"}
    handler = trickle(BODY_TOO_SLOW, 0.02, streamed, 500, "Internal Server Error")
    async with RawServer(handler) as server:
        row, log, _ = await deliver_one(tmp_path, server.url + "/h", delivery)
    assert_retried_then_dead(row, log, 500, "HTTP 500 Internal Server Error")
    for attempt in log:
        excerpt = attempt["response_excerpt"].encode()
        assert excerpt and BODY_TOO_SLOW.startswith(excerpt)


# --- HTTP answers that are not a success ----------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_a_failure_and_not_followed(tmp_path: Path, status: int) -> None:
    async with Recorder(status=status) as rx:
        rx.reply.headers = {"Location": rx.url_for("/elsewhere")}
        row, log, _ = await deliver_one(tmp_path, rx.url_for("/hook"), TWO_TRIES)
    error = f"redirect not followed ({status} to {rx.url_for('/elsewhere')})"
    assert_retried_then_dead(row, log, status, error)
    assert rx.paths() == ["/hook", "/hook"]


async def test_gone_parks_and_deactivates_without_retrying(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, delivery={"max_attempts": 5, "retry_schedule": ["100ms"]})
    async with Recorder(status=410) as rx, running(settings) as d, Api(d.url) as api:
        hook = await api.create_webhook(rx.url_for("/h"))
        wid = hook["webhook_id"]
        await api.emit({"type": "fault.test", "data": {"n": 1}})
        row = await wait_row(api, wid, finished)
        log = await log_of(api, row)
        shown = await api.ok("GET", f"/v1/webhooks/{wid}")
        # A later event is not even queued for the deactivated webhook.
        (later,) = await api.emit({"type": "fault.test", "data": {"n": 2}})
        end = time.monotonic() + DEADLINE
        while (await api.ok("GET", "/v1/status"))["scanner_lag_events"]:
            assert time.monotonic() < end, "the scanner never caught up"
            await asyncio.sleep(0.02)
        rows = await api.deliveries(webhook_id=wid)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("parked", 1, 410)
    assert row["last_error"] == "HTTP 410 Gone"
    assert row["next_attempt_at"] is None
    assert summary(log) == [(1, 410, "HTTP 410 Gone", "gone")]
    assert shown["active"] is False and "410" in shown["disabled_reason"]
    assert [r["event_id"] for r in rows] == [row["event_id"]] != [later]
    assert len(rx.requests) == 1


# --- Retry-After ----------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


REASONS = {429: "Too Many Requests", 503: "Service Unavailable", 500: "Internal Server Error"}
TWO_HOURS = 7200.0


@pytest.mark.parametrize(
    ("status", "retry_after", "schedule", "expected"),
    [
        # honoured: the larger of backoff and Retry-After ...
        pytest.param(429, lambda: "120", "1s", (120.0, 120.0), id="429-seconds"),
        pytest.param(503, lambda: "120", "1s", (120.0, 120.0), id="503-seconds"),
        # ... capped at backoff + 2 h
        pytest.param(503, lambda: "86400", "1s", (1 + TWO_HOURS,) * 2, id="503-seconds-capped"),
        pytest.param(429, lambda: "86400", "1s", (1 + TWO_HOURS,) * 2, id="429-seconds-capped"),
        # an HTTP date (second resolution, taken when the answer arrives)
        pytest.param(429, lambda: http_date(3600), "1s", (3540.0, 3601.0), id="429-date"),
        pytest.param(
            503, lambda: http_date(86400), "1s", (1 + TWO_HOURS,) * 2, id="503-date-capped"
        ),
        # the backoff wins over a shorter or past Retry-After
        pytest.param(429, lambda: "0", "1h", (3600.0, 3600.0), id="429-zero"),
        pytest.param(503, lambda: http_date(-600), "1h", (3600.0, 3600.0), id="503-past-date"),
        pytest.param(429, lambda: "soon", "1h", (3600.0, 3600.0), id="429-unparseable"),
        # only 429 and 503 are honoured
        pytest.param(500, lambda: "7200", "1h", (3600.0, 3600.0), id="500-ignored"),
    ],
)
async def test_retry_after_pushes_the_next_attempt(
    tmp_path: Path,
    status: int,
    retry_after: Callable[[], str],
    schedule: str,
    expected: tuple[float, float],
) -> None:
    delivery = {"max_attempts": 2, "retry_schedule": [schedule], "jitter": 0.0}
    async with Recorder(status=status, headers={"Retry-After": retry_after()}) as rx:
        row, log, _ = await deliver_one(
            tmp_path, rx.url_for("/h"), delivery, done=lambda r: r["attempts"] >= 1
        )
    error = f"HTTP {status} {REASONS[status]}"
    assert (row["status"], row["attempts"]) == ("pending", 1), row
    assert (row["last_status_code"], row["last_error"]) == (status, error)
    assert summary(log) == [(1, status, error, "retry")]
    delay = (when(row["next_attempt_at"]) - when(row["last_attempt_at"])).total_seconds()
    low, high = expected
    assert low - 0.001 <= delay <= high + 0.001, delay
    assert when(row["next_attempt_at"]) > datetime.now(UTC) + timedelta(seconds=low - 60)
    assert len(rx.requests) == 1


# --- what is kept of the answer -------------------------------------------------------


async def test_huge_streaming_response_keeps_only_max_response_bytes(tmp_path: Path) -> None:
    total = 2 * 1024 * 1024 * 1024  # 2 GiB offered; only the cap is ever read
    streamed = Streamed()
    delivery = {**TWO_TRIES, "max_response_bytes": 1000}
    async with RawServer(endless(total, streamed)) as server:
        row, log, _ = await deliver_one(tmp_path, server.url + "/h", delivery)
        await asyncio.wait_for(streamed.client_gone.wait(), DEADLINE)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 200)
    assert summary(log) == [(1, 200, None, "delivered")]
    excerpt = log[0]["response_excerpt"]
    assert len(excerpt) <= 1000
    assert excerpt == "a" * 1000
    assert streamed.sent < total // 2  # the daemon dropped the connection, it did not read it all


async def test_large_error_body_is_capped_in_every_attempt(tmp_path: Path) -> None:
    delivery = {**TWO_TRIES, "max_response_bytes": 100}
    async with Recorder(status=500, body=b"e" * 100_000) as rx:
        row, log, _ = await deliver_one(tmp_path, rx.url_for("/h"), delivery)
    assert_retried_then_dead(row, log, 500, "HTTP 500 Internal Server Error")
    assert [a["response_excerpt"] for a in log] == ["e" * 100] * 2


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_untrusted_certificate_is_refused_by_default(tmp_path: Path, ca: trustme.CA) -> None:
    async with Recorder(status=204, ssl_context=tls_server_context(ca)) as rx:
        row, log, _ = await deliver_one(tmp_path, rx.url_for("/h"), TWO_TRIES)
    error = row["last_error"]
    assert error.startswith("TLS error: certificate verify failed: "), error
    assert_retried_then_dead(row, log, None, error)
    assert rx.requests == []


async def test_ca_file_makes_the_receiver_trusted(tmp_path: Path, ca: trustme.CA) -> None:
    pem = tmp_path / "receivers-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    async with Recorder(status=204, ssl_context=tls_server_context(ca)) as rx:
        row, log, _ = await deliver_one(
            tmp_path, rx.url_for("/h"), {**TWO_TRIES, "ca_file": str(pem)}
        )
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("delivered", 1, 204)
    assert summary(log) == [(1, 204, None, "delivered")]
    assert len(rx.requests) == 1


async def test_ca_file_is_added_to_the_system_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "system" store is a CA of our own, named by SSL_CERT_FILE (read by OpenSSL when
    # a context loads its default verify paths), so nothing outside the loopback is used.
    system_ca, internal_ca = trustme.CA(), trustme.CA()
    system_pem, internal_pem = tmp_path / "system.pem", tmp_path / "internal.pem"
    system_ca.cert_pem.write_to_path(str(system_pem))
    internal_ca.cert_pem.write_to_path(str(internal_pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(system_pem))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    settings = make_settings(tmp_path, delivery={**TWO_TRIES, "ca_file": str(internal_pem)})
    async with (
        Recorder(status=204, ssl_context=tls_server_context(system_ca)) as public,
        Recorder(status=204, ssl_context=tls_server_context(internal_ca)) as internal,
        running(settings) as d,
        Api(d.url) as api,
    ):
        await api.create_webhook(public.url_for("/public"))
        await api.create_webhook(internal.url_for("/internal"))
        await api.emit({"type": "fault.test", "data": {}})
        end = time.monotonic() + DEADLINE
        while True:
            rows = await api.deliveries()
            if len(rows) == 2 and all(finished(r) for r in rows):
                break
            assert time.monotonic() < end, rows
            await asyncio.sleep(0.02)
    assert {r["status"] for r in rows} == {"delivered"}, [r["last_error"] for r in rows]


# --- DNS ------------------------------------------------------------------------------


async def test_name_that_does_not_resolve_is_a_dns_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RFC 6761: names under .invalid never resolve. Answer that here, as a resolver must,
    # so the test sends no DNS query off this machine; every other name is untouched.
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.rstrip(".").endswith(".invalid"):
            asked.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    delivery = {**TWO_TRIES, "allow_private_destinations": True}
    row, log, _ = await deliver_one(tmp_path, "http://nonexistent.invalid/hook", delivery)
    error = "DNS error: nonexistent.invalid: Name or service not known"
    assert_retried_then_dead(row, log, None, error)
    assert asked and set(asked) == {"nonexistent.invalid"}
