"""Poison events (issue 15, item 1): an event id that cannot travel in a header.

The id is the `webhook-id` header of every attempt. An id holding a control character
was accepted at ingest; aiohttp then refused to build the request, the attempt's task
died without an outcome, and the row stayed inflight with no attempt and no log row, to
be claimed and to die again after every lease: never dead, and eight of them filled the
webhook's concurrency cap so that nothing else reached that receiver.

Now ingest refuses what cannot travel (a 400 naming the field), and rows stored before
that (written here straight into the DuckDB file, before the daemon starts, so that no
validation can stop them) get an outcome like any failed attempt: counted, logged,
retried, dead. Real daemon, real DuckDB file, receivers on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.conftest import Api, make_settings, running
from tests.receivers import Recorder
from webhookd.config import Settings
from webhookd.events import body

DEADLINE = 20.0
POISON_IDS = [f"poison{bad}0" for bad in ("\n", "\r", "\x00", "\x1b", "\x7f")]


def db(path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read or write the database file while no daemon holds it."""
    con = duckdb.connect(str(path))
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def store_unchecked(path: Path, events: list[tuple[str, str]]) -> None:
    """Events written into pipeline_events as an older webhookd let them in: no check."""
    now = datetime.now(UTC)
    con = duckdb.connect(str(path))
    try:
        for event_id, event_type in events:
            con.execute(
                "INSERT INTO pipeline_events "
                "(event_id, event_type, payload, body, occurred_at, ingested_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    event_id,
                    event_type,
                    "{}",
                    body(event_id, event_type, now, "{}"),
                    now.replace(tzinfo=None),
                    now.replace(tzinfo=None),
                ],
            )
    finally:
        con.close()


async def webhook_for(settings: Settings, url: str, event_types: list[str]) -> str:
    """Create the database file and one webhook, then stop the daemon."""
    async with running(settings) as d, Api(d.url) as api:
        hook = await api.create_webhook(url, event_types=event_types)
        webhook_id: str = hook["webhook_id"]
    return webhook_id


async def wait_rows(
    api: Api, wid: str, done: Callable[[dict[str, dict[str, Any]]], bool]
) -> dict[str, dict[str, Any]]:
    """Poll the webhook's queue rows (by event id) until `done(rows)` holds."""
    end = time.monotonic() + DEADLINE
    rows: dict[str, dict[str, Any]] = {}
    while True:
        rows = {r["event_id"]: r for r in await api.deliveries(webhook_id=wid)}
        if done(rows):
            return rows
        if time.monotonic() > end:
            raise AssertionError(f"the deliveries never got there; last seen: {rows}")
        await asyncio.sleep(0.02)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def log_of(path: Path, event_id: str) -> list[tuple[Any, ...]]:
    return db(
        path,
        "SELECT attempt, status_code, error, outcome FROM webhook_deliveries "
        "WHERE event_id = ? ORDER BY attempt_id",
        event_id,
    )


# --- ingest refuses what cannot travel -----------------------------------------------


async def test_eight_events_with_a_newline_in_their_id_are_a_400(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running(settings) as d, Api(d.url) as api:
        await api.create_webhook("http://127.0.0.1:9/h", event_types=["t"])
        batch = [{"id": f"poison\n{i}", "type": "t", "data": {}} for i in range(8)]
        status, answer = await api.request("POST", "/v1/events", batch)
        assert status == 400, answer
        assert answer["error"]["code"] == "invalid_event"
        assert answer["error"]["message"].startswith("events[0].id: "), answer
        await d.stop()
    assert db(settings.database.path, "SELECT count(*) FROM pipeline_events") == [(0,)]


@pytest.mark.parametrize("field", ["id", "type"])
async def test_every_control_character_in_an_id_or_a_type_is_a_400_naming_it(
    tmp_path: Path, field: str
) -> None:
    async with running(make_settings(tmp_path)) as d, Api(d.url) as api:
        for bad in POISON_IDS:
            good = {"id": "evt_first", "type": "t", "data": {}}
            event = {"id": "evt_ok", "type": "t", "data": {}, field: bad}
            status, answer = await api.request("POST", "/v1/events", [good, event])
            assert status == 400, (bad, answer)
            assert answer["error"]["code"] == "invalid_event"
            assert answer["error"]["message"].startswith(f"events[1].{field}: "), answer
        assert await api.emit({"id": "evt_ok", "type": "t", "data": {}}) == ["evt_ok"]


# --- rows stored before the check: an outcome for every attempt ----------------------


async def test_a_stored_poison_event_is_counted_logged_retried_and_finally_dead(
    tmp_path: Path,
) -> None:
    delivery = {"max_attempts": 2, "retry_schedule": ["1h"]}
    settings = make_settings(tmp_path, delivery=delivery)
    path = settings.database.path
    async with Recorder() as receiver:
        wid = await webhook_for(settings, receiver.url + "/h", ["t"])
        store_unchecked(path, [("poison\n0", "t")])

        # Attempt 1 fails, with the error, and waits for its retry (an hour away).
        async with running(settings) as d, Api(d.url) as api:
            rows = await wait_rows(
                api, wid, lambda rows: bool(rows) and rows["poison\n0"]["attempts"] > 0
            )
            row = rows["poison\n0"]
            assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, None)
            assert row["last_error"].startswith("internal error: ValueError: "), row
            assert row["lease_until"] is None
            assert when(row["next_attempt_at"]) > datetime.now(UTC)
            await d.stop()
        error = row["last_error"]
        assert log_of(path, "poison\n0") == [(1, None, error, "retry")]

        # The retry comes due: attempt 2 fails too and uses the budget up.
        db(
            path,
            "UPDATE webhook_delivery_queue SET next_attempt_at = ?",
            datetime.now(UTC).replace(tzinfo=None),
        )
        async with running(settings) as d, Api(d.url) as api:
            rows = await wait_rows(
                api, wid, lambda rows: bool(rows) and rows["poison\n0"]["status"] == "dead"
            )
            assert rows["poison\n0"]["attempts"] == 2
            assert rows["poison\n0"]["last_error"] == error
            await d.stop()
        assert log_of(path, "poison\n0") == [(1, None, error, "retry"), (2, None, error, "dead")]
        assert receiver.requests == []


async def test_a_normal_event_after_eight_stored_poison_events_is_delivered(
    tmp_path: Path,
) -> None:
    """Eight poison rows used to hold the webhook's eight slots (inflight, for a lease
    after lease): the lease here outlasts the deadline, so only outcomes can free them."""
    delivery = {"per_webhook_concurrency": 8, "lease": "120s", "retry_schedule": ["1h"]}
    settings = make_settings(tmp_path, delivery=delivery)
    path = settings.database.path
    poison = [f"poison\n{i}" for i in range(8)]
    async with Recorder() as receiver:
        wid = await webhook_for(settings, receiver.url + "/h", ["t"])
        store_unchecked(path, [(event_id, "t") for event_id in poison])
        async with running(settings) as d, Api(d.url) as api:
            # Every poison row has been claimed once.
            await wait_rows(
                api,
                wid,
                lambda rows: (
                    len(rows) == 8
                    and all(r["status"] != "pending" or r["attempts"] for r in rows.values())
                ),
            )
            await api.emit({"id": "evt_normal", "type": "t", "data": {"n": 1}})
            rows = await wait_rows(
                api,
                wid,
                lambda rows: "evt_normal" in rows and rows["evt_normal"]["status"] == "delivered",
            )
            for event_id in poison:
                assert (rows[event_id]["status"], rows[event_id]["attempts"]) == ("pending", 1)
            await d.stop()
        assert [r.headers["webhook-id"] for r in receiver.requests] == ["evt_normal"]
    for event_id in poison:
        ((attempt, code, error, outcome),) = log_of(path, event_id)
        assert (attempt, code, outcome) == (1, None, "retry")
        assert error.startswith("internal error: ValueError: ")


# --- URLs stored before hosts were checked (item 6) ----------------------------------


async def test_a_stored_url_with_an_invalid_host_is_a_failed_attempt_then_dead(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, delivery={"max_attempts": 2, "retry_schedule": ["100ms"]})
    path = settings.database.path
    wid = await webhook_for(settings, "http://127.0.0.1:9/h", [])
    db(path, "UPDATE webhooks SET url = 'http://127.0.0.1../h'")
    async with running(settings) as d, Api(d.url) as api:
        await api.emit({"id": "evt_1", "type": "t", "data": {}})
        rows = await wait_rows(
            api, wid, lambda rows: bool(rows) and rows["evt_1"]["status"] == "dead"
        )
        await d.stop()
    error = rows["evt_1"]["last_error"]
    assert error == (
        "invalid URL: URL host '127.0.0.1..' is not a valid host name: it has an empty label"
    )
    assert log_of(path, "evt_1") == [(1, None, error, "retry"), (2, None, error, "dead")]


@pytest.mark.parametrize(
    ("url", "mention"),
    [
        ("http://[::1%]/", "zone id"),
        ("http://1.2.3.4.5/", "last label is a number"),
        ("http://127.0.0.1../", "empty label"),
        ("https://example.com/" + "p" * 2048, "longer than 2048"),
    ],
)
async def test_registering_a_url_with_an_invalid_host_is_a_400_naming_url(
    tmp_path: Path, url: str, mention: str
) -> None:
    async with running(make_settings(tmp_path)) as d, Api(d.url) as api:
        status, answer = await api.request("POST", "/v1/webhooks", {"url": url})
        assert status == 400, answer
        assert answer["error"]["code"] == "invalid_url"
        assert answer["error"]["message"].startswith("url: URL "), answer
        assert mention in answer["error"]["message"]
        assert (await api.ok("GET", "/v1/webhooks"))["items"] == []
