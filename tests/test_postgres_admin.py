"""The PostgreSQL engine's webhook and operator operations (store/postgres/admin.py) on a
real server: the session's throwaway cluster (conftest's `pg`: tests/pg.py, or
WEBHOOKD_TEST_POSTGRES_URL), a fresh schema migrated per test. Rows are written in SQL
where the scanner or the workers would write them, so most tests need only admin.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.pg import PgCluster
from webhookd import events as events_module
from webhookd.api.render import webhook_json
from webhookd.events import parse_event
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import DeliveryFilter, NotFound, Outcome, WebhookPatch
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.postgres import PostgresStore, admin
from webhookd.store.postgres.migrate import migrate, quote_ident
from webhookd.store.records import utcnow

# -- the session's server (conftest `pg`, tests/pg.py), a schema per test -----------------


@dataclass
class Db:
    url: str
    schema: str

    async def connect(self) -> Any:
        # As the daemon's connections: the bodies it writes are kept (003_outbox_guards.sql).
        con = await asyncpg.connect(self.url, server_settings={"webhookd.daemon": "on"})
        await con.execute(f"SET search_path TO {quote_ident(self.schema)}")
        return con


@pytest.fixture
async def db(pg: PgCluster, pg_schema: str) -> Db:
    """This test's schema (conftest drops it), migrated as the daemon migrates it."""
    con = await asyncpg.connect(pg.url)
    try:
        await migrate(con, pg_schema)
    finally:
        await con.close()
    return Db(pg.url, pg_schema)


@pytest.fixture
async def con(db: Db) -> AsyncIterator[Any]:
    c = await db.connect()
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def notified(db: Db, kind: str) -> AsyncIterator[list[str]]:
    """The notifications on this schema's `kind` channel while the block runs."""
    got: list[str] = []
    listener = await db.connect()
    await listener.add_listener(f"{db.schema}.{kind}", lambda *args: got.append(args[2]))
    try:
        yield got
        for _ in range(50):  # notifications arrive asynchronously after the commit
            if got:
                break
            await asyncio.sleep(0.01)
    finally:
        await listener.close()


# -- rows as the scanner and the workers would write them ---------------------------------


async def hook(con: Any, types: list[str] | None = None, *, active: bool = True) -> str:
    created = await admin.create_webhook(con, "http://127.0.0.1:9/h", types or [], "s", "")
    webhook_id = created.webhook_id
    if not active:
        await admin.update_webhook(con, webhook_id, WebhookPatch(active=False))
    return webhook_id


async def add_event(
    con: Any, event_id: str, event_type: str = "t", *, scanned: bool = True
) -> bytes:
    """An event as the API ingests it (body built), and the cursor past it if `scanned`."""
    event = parse_event({"id": event_id, "type": event_type, "data": {"n": 1}}, 0, utcnow())
    await con.execute(
        "INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at) "
        "VALUES ($1, $2, $3::jsonb, $4, $5)",
        event_id,
        event_type,
        event.payload,
        event.body,
        event.occurred_at.replace(tzinfo=None),
    )
    if scanned:
        # As a finished batch leaves it: every transaction up to this event's scanned.
        await con.execute(
            "UPDATE scanner_cursor c SET xid = e.xid, seq = e.seq, target = NULL, "
            "snap = ((e.xid::text::bigint + 1) || ':' || (e.xid::text::bigint + 1) || ':')"
            "::pg_snapshot FROM pipeline_events e WHERE e.event_id = $1 AND c.name = 'main'",
            event_id,
        )
    return event.body


async def add_row(
    con: Any,
    webhook_id: str,
    event_id: str,
    status: Status,
    *,
    attempts: int = 0,
    last_attempt_at: datetime | None = None,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
) -> None:
    now = utcnow()
    await con.execute(
        """
        INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
            next_attempt_at, body, last_attempt_at, created_at, updated_at)
        VALUES ($1, $2, $3, $4, 0, $5, '\\x7b7d', $6, $7, $8)
        """,
        webhook_id,
        event_id,
        str(status),
        attempts,
        next_attempt_at,
        last_attempt_at,
        created_at or now,
        updated_at or now,
    )


async def add_attempt(
    con: Any, webhook_id: str, event_id: str, attempt: int, at: datetime, outcome: str
) -> None:
    await con.execute(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at, "
        "duration_ms, status_code, error, response_excerpt, outcome) "
        "VALUES ($1, $2, $3, $4, 1.5, $5, $6, '', $7)",
        webhook_id,
        event_id,
        attempt,
        at,
        200 if outcome == "delivered" else 500,
        None if outcome == "delivered" else "HTTP 500",
        outcome,
    )


async def row(con: Any, webhook_id: str, event_id: str) -> Any:
    return await con.fetchrow(
        "SELECT * FROM webhook_delivery_queue WHERE webhook_id = $1 AND event_id = $2",
        webhook_id,
        event_id,
    )


async def states(con: Any) -> dict[tuple[str, str], str]:
    rows = await con.fetch("SELECT webhook_id, event_id, status FROM webhook_delivery_queue")
    return {(r[0], r[1]): r[2] for r in rows}


# -- webhooks ------------------------------------------------------------------------------


async def test_create_get_and_list_webhooks(con: Any) -> None:
    created = webhook_json(
        await admin.create_webhook(con, "https://a.example/h", ["x.y"], "sec", "first")
    )
    assert created["webhook_id"].startswith("wh_") and len(created["webhook_id"]) == 27
    assert created["event_types"] == ["x.y"]
    assert (created["active"], created["description"], created["url"]) == (
        True,
        "first",
        "https://a.example/h",
    )
    assert created["created_at"].endswith("Z") and created["created_at"] == created["updated_at"]
    assert webhook_json(await admin.get_webhook(con, created["webhook_id"])) == created
    health = await con.fetchval(
        "SELECT health_reset_at FROM webhooks WHERE webhook_id = $1", created["webhook_id"]
    )
    assert health is not None
    ids = sorted([created["webhook_id"]] + [await hook(con) for _ in range(4)])
    first = await admin.list_webhooks(con, 2, None)
    assert [w.webhook_id for w in first.items] == ids[:2] and first.next == ids[1]
    second = await admin.list_webhooks(con, 2, first.next)
    third = await admin.list_webhooks(con, 2, second.next)
    assert [w.webhook_id for w in second.items + third.items] == ids[2:]
    assert third.next is None
    with pytest.raises(NotFound):
        await admin.get_webhook(con, "wh_nope")


async def test_secrets_and_rotation(con: Any) -> None:
    created = webhook_json(await admin.create_webhook(con, "https://a.example/h", [], "old", ""))
    wid = created["webhook_id"]
    assert await admin.get_webhook_secrets(con, wid) == ("https://a.example/h", ("old",), None)
    assert created["previous_secret_expires_at"] is None
    rotated = webhook_json(await admin.rotate_secret(con, wid, "new", 3600))
    assert rotated["previous_secret_expires_at"] is not None
    assert rotated["updated_at"] >= created["updated_at"]
    assert await admin.get_webhook_secrets(con, wid) == (
        "https://a.example/h",
        ("new", "old"),
        None,
    )
    await admin.rotate_secret(con, wid, "newer", 0)  # no grace: only the new one signs
    assert await admin.get_webhook_secrets(con, wid) == ("https://a.example/h", ("newer",), None)
    assert (await admin.get_webhook(con, wid)).previous_secret_expires_at is None
    assert "secret" not in " ".join(k for k in rotated if k != "previous_secret_expires_at")
    with pytest.raises(NotFound):
        await admin.get_webhook_secrets(con, "wh_nope")
    with pytest.raises(NotFound):
        await admin.rotate_secret(con, "wh_nope", "x", 1)


async def test_update_changes_fields_and_raises_not_found(con: Any) -> None:
    wid = await hook(con, ["a"])
    updated = webhook_json(
        await admin.update_webhook(
            con,
            wid,
            WebhookPatch(url="https://b.example/", event_types=["b", "c"], description="d"),
        )
    )
    assert (updated["url"], updated["event_types"], updated["description"]) == (
        "https://b.example/",
        ["b", "c"],
        "d",
    )
    assert updated["active"] is True
    assert webhook_json(await admin.get_webhook(con, wid)) == updated
    cleared = webhook_json(await admin.update_webhook(con, wid, WebhookPatch(event_types=[])))
    assert cleared["event_types"] == [] and cleared["url"] == "https://b.example/"
    with pytest.raises(NotFound):
        await admin.update_webhook(con, "wh_nope", WebhookPatch(active=True))


async def test_disable_parks_pending_rows_and_enable_redrives_parked_ones(db: Db, con: Any) -> None:
    wid, other = await hook(con), await hook(con)
    await add_row(con, wid, "p", Status.PENDING)
    await add_row(con, wid, "i", Status.INFLIGHT)
    await add_row(con, wid, "d", Status.DEAD, attempts=8)
    await add_row(con, wid, "ok", Status.DELIVERED, attempts=1)
    await add_row(con, other, "p", Status.PENDING)
    disabled = webhook_json(await admin.update_webhook(con, wid, WebhookPatch(active=False)))
    assert disabled["active"] is False
    assert disabled["disabled_reason"] == "disabled by an operator"
    assert await states(con) == {
        (wid, "p"): "parked",
        (wid, "i"): "inflight",  # its attempt ends, then it is parked
        (wid, "d"): "dead",
        (wid, "ok"): "delivered",
        (other, "p"): "pending",
    }
    await add_row(con, wid, "g", Status.PARKED, attempts=3)  # a 410 parked this one
    await con.execute("UPDATE webhooks SET failing_since = now() WHERE webhook_id = $1", wid)
    before = utcnow()
    async with notified(db, "deliveries") as got:
        enabled = webhook_json(await admin.update_webhook(con, wid, WebhookPatch(active=True)))
    assert got, "enabling wakes the workers"
    assert enabled["active"] is True
    assert (enabled["disabled_reason"], enabled["failing_since"]) == (None, None)
    assert (await states(con))[(wid, "p")] == "pending"
    again = await row(con, wid, "g")
    assert again["status"] == "pending" and again["retry_base"] == 3
    assert again["next_attempt_at"] >= before
    assert (await states(con))[(wid, "d")] == "dead"  # enable re-drives parked rows only
    health = await con.fetchval("SELECT health_reset_at FROM webhooks WHERE webhook_id = $1", wid)
    assert health >= before


async def test_enabling_an_active_webhook_redrives_nothing(db: Db, con: Any) -> None:
    wid = await hook(con)
    await add_row(con, wid, "x", Status.PARKED)  # parked by a 410 that raced an enable
    async with notified(db, "deliveries") as got:
        await admin.update_webhook(con, wid, WebhookPatch(active=True))
    assert not got
    assert (await states(con))[(wid, "x")] == "parked"


async def test_delete_keeps_rows_parked(con: Any) -> None:
    wid = await hook(con)
    await add_row(con, wid, "p", Status.PENDING)
    await add_row(con, wid, "ok", Status.DELIVERED)
    await admin.delete_webhook(con, wid)
    assert await states(con) == {(wid, "p"): "parked", (wid, "ok"): "delivered"}
    with pytest.raises(NotFound):
        await admin.get_webhook(con, wid)
    with pytest.raises(NotFound):
        await admin.delete_webhook(con, wid)


# -- deliveries and attempts ---------------------------------------------------------------


async def test_list_deliveries_filters_and_pages(con: Any) -> None:
    a, b = await hook(con), await hook(con)
    t0 = datetime(2026, 1, 1)
    for i in range(3):
        await add_row(con, a, f"e{i}", Status.PENDING, created_at=t0 + timedelta(seconds=i))
        await add_row(con, b, f"e{i}", Status.DEAD, created_at=t0 + timedelta(seconds=i))
    everything = await admin.list_deliveries(con, DeliveryFilter(), 100, None)
    order = [(d["webhook_id"], d["event_id"]) for d in everything.items]
    expected = [(w, f"e{i}") for i in (2, 1, 0) for w in sorted([a, b], reverse=True)]
    assert order == expected and everything.next is None
    seen: list[tuple[str, str]] = []
    cursor = None
    for _ in range(3):  # a cursor that does not advance fails here instead of looping
        page = await admin.list_deliveries(con, DeliveryFilter(), 4, cursor)
        seen += [(d["webhook_id"], d["event_id"]) for d in page.items]
        cursor = page.next
        if cursor is None:
            break
    assert seen == expected and cursor is None
    only_a = await admin.list_deliveries(con, DeliveryFilter(webhook_id=a), 100, None)
    assert {d["webhook_id"] for d in only_a.items} == {a} and len(only_a.items) == 3
    dead = await admin.list_deliveries(con, DeliveryFilter(status=Status.DEAD), 100, None)
    assert {(d["webhook_id"], d["status"]) for d in dead.items} == {(b, "dead")}
    one = await admin.list_deliveries(con, DeliveryFilter(event_id="e1", webhook_id=b), 100, None)
    assert [(d["webhook_id"], d["event_id"]) for d in one.items] == [(b, "e1")]
    assert one.items[0]["created_at"] == "2026-01-01T00:00:01.000000Z"
    for bad in ("not-a-cursor!", "WzFd", "WyJ4IiwgImEiLCAiYiJd"):  # junk, [1], ["x","a","b"]
        with pytest.raises(ValueError):
            await admin.list_deliveries(con, DeliveryFilter(), 10, bad)


async def test_list_attempts(con: Any) -> None:
    wid = await hook(con)
    t0 = datetime(2026, 1, 1)
    await add_row(con, wid, "e", Status.DELIVERED, attempts=2)
    await add_attempt(con, wid, "e", 1, t0, "retry")
    await add_attempt(con, wid, "e", 2, t0 + timedelta(seconds=5), "delivered")
    await add_attempt(con, wid, "other", 1, t0, "retry")
    attempts = await admin.list_attempts(con, wid, "e")
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
        (1, "retry", 500),
        (2, "delivered", 200),
    ]
    assert attempts[0]["attempted_at"] == "2026-01-01T00:00:00.000000Z"
    assert attempts[0]["error"] == "HTTP 500" and attempts[0]["duration_ms"] == 1.5
    await add_row(con, wid, "queued", Status.PENDING)
    assert await admin.list_attempts(con, wid, "queued") == []
    await con.execute("DELETE FROM webhook_delivery_queue WHERE event_id = 'e'")
    assert len(await admin.list_attempts(con, wid, "e")) == 2  # the log outlives the row
    with pytest.raises(NotFound):
        await admin.list_attempts(con, wid, "never")


# -- redrive ---------------------------------------------------------------------------------


async def test_redrive_since_takes_only_rows_that_failed_after(db: Db, con: Any) -> None:
    a, b = await hook(con), await hook(con)
    off = await hook(con, active=False)
    now = utcnow()
    since = now - timedelta(hours=1)
    await add_row(con, a, "old", Status.DEAD, attempts=8, last_attempt_at=now - timedelta(hours=2))
    await add_row(
        con, a, "new", Status.DEAD, attempts=8, last_attempt_at=now - timedelta(minutes=5)
    )
    await add_row(con, a, "edge", Status.DEAD, attempts=8, last_attempt_at=since)
    await add_row(con, b, "new", Status.DEAD, attempts=8, last_attempt_at=now)
    await add_row(con, a, "parked", Status.PARKED, attempts=1, last_attempt_at=now)
    await add_row(con, off, "new", Status.DEAD, attempts=8, last_attempt_at=now)
    # `since` as a client sends it: aware, in another zone; the store keeps naive UTC.
    aware = since.replace(tzinfo=UTC).astimezone(timezone(timedelta(hours=-5)))
    async with notified(db, "deliveries") as got:
        count = await admin.redrive(con, Status.DEAD, a, aware)
    assert count == 2 and got
    assert await states(con) == {
        (a, "old"): "dead",
        (a, "new"): "pending",
        (a, "edge"): "pending",
        (b, "new"): "dead",
        (a, "parked"): "parked",
        (off, "new"): "dead",
    }
    redriven = await row(con, a, "new")
    assert redriven["retry_base"] == 8 and redriven["attempts"] == 8
    assert redriven["next_attempt_at"] >= now and redriven["lease_until"] is None
    # Every webhook: the row of an inactive webhook is parked again and not counted.
    assert await admin.redrive(con, Status.DEAD, None, None) == 2
    assert (await states(con))[(off, "new")] == "parked"
    assert (await states(con))[(b, "new")] == "pending"
    assert await admin.redrive(con, Status.PARKED, a, None) == 1
    async with notified(db, "deliveries") as got:
        assert await admin.redrive(con, Status.DEAD, None, None) == 0
    assert not got


# -- replay ----------------------------------------------------------------------------------


async def test_replay_a_delivered_row(db: Db, con: Any) -> None:
    a, b = await hook(con), await hook(con)
    await add_event(con, "e")
    await add_row(con, a, "e", Status.DELIVERED, attempts=2)
    await add_row(con, b, "e", Status.PENDING)
    async with notified(db, "deliveries") as got:
        assert await admin.replay(con, "e", a) == 1
    assert got
    replayed = await row(con, a, "e")
    assert (replayed["status"], replayed["retry_base"], replayed["attempts"]) == ("pending", 2, 2)
    assert (await row(con, b, "e"))["status"] == "pending"
    assert await con.fetchval("SELECT count(*) FROM webhook_delivery_queue") == 2
    # A second replay of a row still pending changes nothing.
    assert await admin.replay(con, "e", a) == 0


async def test_replay_of_pruned_rows_comes_back_from_the_event(con: Any) -> None:
    every = await hook(con)
    typed = await hook(con, ["t"])
    other = await hook(con, ["other"])
    off = await hook(con, active=False)
    body = await add_event(con, "e", "t")  # scanned, delivered, pruned: no rows left
    assert await admin.replay(con, "e", None) == 2
    assert await states(con) == {(every, "e"): "pending", (typed, "e"): "pending"}
    assert bytes((await row(con, every, "e"))["body"]) == body
    # Named explicitly, a webhook gets it whatever its filter; an inactive one parks it.
    assert await admin.replay(con, "e", other) == 1
    assert await admin.replay(con, "e", off) == 0
    assert (await states(con))[(off, "e")] == "parked"


async def test_replay_of_an_event_never_scanned(con: Any) -> None:
    a = await hook(con)
    b = await hook(con, ["nope"])
    body = await add_event(con, "e", scanned=False)
    assert await admin.replay(con, "e", None) == 1
    assert await states(con) == {(a, "e"): "pending"}
    assert bytes((await row(con, a, "e"))["body"]) == body
    # The scanner reaches it later and inserts nothing more (it uses ON CONFLICT).
    inserted = await con.execute(
        "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
        "retry_base, next_attempt_at, body, created_at, updated_at) "
        "SELECT w.webhook_id, e.event_id, 'pending', 0, 0, now(), e.body, now(), now() "
        "FROM pipeline_events e JOIN webhooks w ON w.active WHERE e.event_id = 'e' "
        "ON CONFLICT DO NOTHING"
    )
    assert inserted == "INSERT 0 1"  # b, named explicitly below, is not there yet
    assert await admin.replay(con, "e", b) == 0  # that row is pending already
    assert len(await states(con)) == 2


async def test_replay_of_an_event_published_in_sql_builds_its_body(
    con: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The daemon's local zone must not leak into the body's timestamp.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        wid = await hook(con)
        occurred = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
        data = '{"z": [1.5, "é", {"b": null, "a": true}], "a": 10000000000000000001}'
        await con.execute("SELECT publish('sql-1', 'order.paid', $1::jsonb, $2)", data, occurred)
        assert await con.fetchval("SELECT body FROM pipeline_events") is None
        assert await admin.replay(con, "sql-1", None) == 1
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    expected = events_module.body(
        "sql-1",
        "order.paid",
        occurred,
        events_module.canonical_json(
            {"z": [1.5, "é", {"b": None, "a": True}], "a": 10000000000000000001}
        ),
    )
    assert expected.startswith(b'{"data":{"a":10000000000000000001,"z":[1.5,"\xc3\xa9",{"a":true')
    assert b'"timestamp":"2026-03-04T05:06:07.890123Z"' in expected
    assert bytes((await row(con, wid, "sql-1"))["body"]) == expected
    stored = await con.fetchval("SELECT body FROM pipeline_events WHERE event_id = 'sql-1'")
    assert bytes(stored) == expected


async def test_replay_and_the_scanner_build_the_same_bodies(db: Db, con: Any) -> None:
    """Whoever builds an SQL event's body first, replay or the scanner, builds the same
    bytes: canonical JSON, or for data Python's json cannot read back (1e5000 prints as
    5001 digits, beyond int's 4300) the data as PostgreSQL prints it."""
    wid = await hook(con)
    occurred = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    specs = {"ok": '{"b": [2.50, {"y": 1, "x": "ü"}], "a": null}', "huge": '{"n": 1e5000}'}
    for name, data in specs.items():
        for who in ("replay", "scan"):
            await con.execute(
                "SELECT publish($1, 't', $2::jsonb, $3)", f"{name}-{who}", data, occurred
            )
    for name in specs:
        assert await admin.replay(con, f"{name}-replay", None) == 1
    store = PostgresStore(db.url, schema=db.schema, pool_size=2)
    await store.open()
    try:
        assert (await store.scan(100)).events == 4
    finally:
        await store.close()
    stored = {
        r[0]: bytes(r[1]) for r in await con.fetch("SELECT event_id, body FROM pipeline_events")
    }
    queued = {
        r[0]: bytes(r[1])
        for r in await con.fetch("SELECT event_id, body FROM webhook_delivery_queue")
    }
    assert len(queued) == 4 and {(wid, e) for e in queued} == set(await states(con))
    for name, data in specs.items():
        printed = await con.fetchval("SELECT $1::jsonb::text", data)
        for who in ("replay", "scan"):
            event_id = f"{name}-{who}"
            payload = (
                events_module.canonical_json({"b": [2.5, {"y": 1, "x": "ü"}], "a": None})
                if name == "ok"
                else printed
            )
            expected = events_module.body(event_id, "t", occurred, payload)
            assert stored[event_id] == expected, event_id
            assert queued[event_id] == expected, event_id
    assert printed == '{"n": 1' + "0" * 5000 + "}"  # not canonical (the space), still JSON


async def test_replay_not_found(con: Any) -> None:
    wid = await hook(con)
    await add_event(con, "e")
    with pytest.raises(NotFound, match="no event"):
        await admin.replay(con, "nope", None)
    with pytest.raises(NotFound, match="no webhook"):
        await admin.replay(con, "e", "wh_nope")
    assert await admin.replay(con, "e", wid) == 1


async def test_replay_counts_parked_rows_of_removed_webhooks_as_nothing(con: Any) -> None:
    a, gone = await hook(con), await hook(con)
    await add_event(con, "e")
    await add_row(con, a, "e", Status.DEAD, attempts=8)
    await add_row(con, gone, "e", Status.DELIVERED)
    await admin.delete_webhook(con, gone)
    assert await admin.replay(con, "e", None) == 1
    assert await states(con) == {(a, "e"): "pending", (gone, "e"): "parked"}


# -- status, prune, auto-disable -------------------------------------------------------------


async def test_status(con: Any) -> None:
    a, b = await hook(con), await hook(con)
    off = await hook(con, active=False)
    now = utcnow()
    await add_row(con, a, "e1", Status.PENDING, next_attempt_at=now - timedelta(seconds=30))
    await add_row(con, a, "e2", Status.PENDING, next_attempt_at=now + timedelta(hours=1))
    await add_row(con, a, "e3", Status.DEAD)
    await add_row(con, b, "e1", Status.DELIVERED)
    for i in range(5):
        await add_event(con, f"s{i}")  # scanned
    for i in range(3):
        await add_event(con, f"u{i}", scanned=False)
    report = await admin.status(con)
    assert report.by_status == {"pending": 2, "dead": 1, "delivered": 1}
    assert report.by_webhook == {a: {"pending": 2, "dead": 1}, b: {"delivered": 1}}
    assert report.oldest_due_age_seconds is not None
    assert 30 <= report.oldest_due_age_seconds < 60
    assert (report.scanner_cursor, report.latest_seq, report.scanner_lag_events) == (5, 8, 3)
    assert report.webhooks_active == 2
    assert report.disabled_webhooks == {off: "disabled by an operator"}
    await con.execute("TRUNCATE webhook_delivery_queue")
    report = await admin.status(con)
    assert report.oldest_due_age_seconds is None and report.by_status == {}


async def test_prune_deletes_old_delivered_rows_and_log_in_batches(con: Any) -> None:
    wid = await hook(con)
    now = utcnow()
    old, recent = now - timedelta(hours=2), now - timedelta(minutes=1)
    for i in range(5):
        await add_row(con, wid, f"old{i}", Status.DELIVERED, updated_at=old)
    await add_row(con, wid, "recent", Status.DELIVERED, updated_at=recent)
    for status in (Status.PENDING, Status.DEAD, Status.PARKED, Status.INFLIGHT):
        await add_row(con, wid, str(status), status, updated_at=old)
    for i in range(3):
        await add_attempt(con, wid, f"old{i}", 1, now - timedelta(days=40), "delivered")
    await add_attempt(con, wid, "recent", 1, now - timedelta(days=1), "delivered")
    delivered_before, log_before = now - timedelta(hours=1), now - timedelta(days=30)
    first = await admin.prune(con, delivered_before, log_before, 2)
    assert (first.queue_rows, first.log_rows) == (2, 2)
    second = await admin.prune(con, delivered_before, log_before, 2)
    assert (second.queue_rows, second.log_rows) == (2, 1)
    third = await admin.prune(con, delivered_before, log_before, 2)
    assert (third.queue_rows, third.log_rows) == (1, 0)
    last = await admin.prune(con, delivered_before, log_before, 2)
    assert (last.queue_rows, last.log_rows) == (0, 0)
    assert await states(con) == {
        (wid, "recent"): "delivered",
        (wid, "pending"): "pending",
        (wid, "dead"): "dead",
        (wid, "parked"): "parked",
        (wid, "inflight"): "inflight",
    }
    assert await con.fetchval("SELECT count(*) FROM webhook_deliveries") == 1


async def test_prune_spares_a_row_replayed_while_it_waits(db: Db, con: Any) -> None:
    wid = await hook(con)
    await add_event(con, "e")
    old = utcnow() - timedelta(hours=2)
    await add_row(con, wid, "e", Status.DELIVERED, updated_at=old)
    other = await db.connect()
    try:
        tx = other.transaction()
        await tx.start()
        assert await admin.replay(other, "e", None) == 1  # holds the row until commit
        pruning = asyncio.ensure_future(admin.prune(con, utcnow(), utcnow(), 10))
        await asyncio.sleep(0.3)
        assert not pruning.done(), "prune waits for the replay's lock"
        await tx.commit()
        pruned = await asyncio.wait_for(pruning, 10)
    finally:
        await other.close()
    assert pruned.queue_rows == 0
    assert await states(con) == {(wid, "e"): "pending"}


async def test_auto_disable(db: Db, con: Any) -> None:
    failing, recovered, fresh, reset, off = [await hook(con) for _ in range(5)]
    await admin.update_webhook(con, off, WebhookPatch(active=False))
    long_ago = datetime(2026, 1, 2, 3, 4, 5, 678000)
    await con.execute("UPDATE webhooks SET created_at = $1, health_reset_at = $1", long_ago)
    t0 = long_ago + timedelta(minutes=1)
    # failing: a delivery, then only failures since t0 + 1h
    await add_attempt(con, failing, "e0", 1, t0, "delivered")
    await add_attempt(con, failing, "e1", 1, t0 + timedelta(hours=1), "retry")
    await add_attempt(con, failing, "e1", 2, t0 + timedelta(hours=2), "dead")
    await add_row(con, failing, "p", Status.PENDING)
    await add_row(con, failing, "i", Status.INFLIGHT)
    # recovered: failures, then a delivery
    await add_attempt(con, recovered, "e1", 1, t0, "retry")
    await add_attempt(con, recovered, "e1", 2, t0 + timedelta(hours=3), "delivered")
    # fresh: failing, but only recently
    await add_attempt(con, fresh, "e1", 1, utcnow(), "retry")
    # reset: failures before an operator re-enabled it do not count
    await add_attempt(con, reset, "e1", 1, t0, "retry")
    await con.execute(
        "UPDATE webhooks SET health_reset_at = $2 WHERE webhook_id = $1",
        reset,
        t0 + timedelta(hours=5),
    )
    await add_attempt(con, off, "e1", 1, t0, "retry")
    cutoff = utcnow() - timedelta(days=1)
    assert await admin.auto_disable(con, cutoff) == [failing]
    hook_row = webhook_json(await admin.get_webhook(con, failing))
    assert hook_row["active"] is False
    assert hook_row["disabled_reason"] == "every attempt failed since 2026-01-02T04:05:05Z"
    assert hook_row["failing_since"] == "2026-01-02T04:05:05.678000Z"
    assert await states(con) == {(failing, "p"): "parked", (failing, "i"): "inflight"}
    assert (await admin.get_webhook(con, fresh)).failing_since is not None
    assert (await admin.get_webhook(con, recovered)).failing_since is None
    assert (await admin.get_webhook(con, reset)).failing_since is None
    assert (webhook_json(await admin.get_webhook(con, off)))[
        "disabled_reason"
    ] == "disabled by an operator"
    assert await admin.auto_disable(con, cutoff) == []
    # Re-enabled, it starts over: the old failures no longer count.
    await admin.update_webhook(con, failing, WebhookPatch(active=True))
    assert await admin.auto_disable(con, cutoff) == []
    assert (await admin.get_webhook(con, failing)).failing_since is None


# -- the same answers as DuckDB -------------------------------------------------------------


def _shape(item: dict[str, Any]) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in item.items()}


async def test_outputs_have_the_duckdb_shapes(con: Any, tmp_path: Path) -> None:
    duck = DuckDBStore(tmp_path / "q.duckdb")
    await duck.open()
    try:
        d_hook = webhook_json(
            await duck.create_webhook("https://a.example/h", ["t"], new_secret(), "x")
        )
        p_hook = webhook_json(
            await admin.create_webhook(con, "https://a.example/h", ["t"], "s", "x")
        )
        assert _shape(p_hook) == _shape(d_hook)
        ignore = {"webhook_id", "created_at", "updated_at"}
        assert {k: v for k, v in p_hook.items() if k not in ignore} == {
            k: v for k, v in d_hook.items() if k not in ignore
        }
        d_rot = webhook_json(await duck.rotate_secret(d_hook["webhook_id"], new_secret(), 60))
        p_rot = webhook_json(await admin.rotate_secret(con, p_hook["webhook_id"], "s2", 60))
        assert _shape(p_rot) == _shape(d_rot)
        d_off = webhook_json(
            await duck.update_webhook(d_hook["webhook_id"], WebhookPatch(active=False))
        )
        p_off = webhook_json(
            await admin.update_webhook(con, p_hook["webhook_id"], WebhookPatch(active=False))
        )
        assert _shape(p_off) == _shape(d_off)
        assert p_off["disabled_reason"] == d_off["disabled_reason"]
        d_on = webhook_json(
            await duck.update_webhook(d_hook["webhook_id"], WebhookPatch(active=True))
        )
        p_on = webhook_json(
            await admin.update_webhook(con, p_hook["webhook_id"], WebhookPatch(active=True))
        )
        assert _shape(p_on) == _shape(d_on)
        d_list = await duck.list_webhooks(10, None)
        p_list = await admin.list_webhooks(con, 10, None)
        assert [_shape(webhook_json(w)) for w in p_list.items] == [
            _shape(webhook_json(w)) for w in d_list.items
        ]
        assert (d_list.next, p_list.next) == (None, None)

        event = parse_event({"id": "e", "type": "t", "data": {}}, 0, utcnow())
        await duck.ingest([event])
        await duck.scan(10)
        (claim,) = await duck.claim(10, 10, 30)
        now = utcnow()
        await duck.record(
            Outcome(
                claim.webhook_id,
                "e",
                1,
                Status.PENDING,
                now,
                now,
                1.5,
                500,
                "HTTP 500",
                "",
                "retry",
                claimed_until=claim.claimed_until,
            )
        )
        pid = p_hook["webhook_id"]
        await add_event(con, "e")
        await add_row(
            con, pid, "e", Status.PENDING, attempts=1, last_attempt_at=now, next_attempt_at=now
        )
        await con.execute(
            "UPDATE webhook_delivery_queue SET last_status_code = 500, last_error = 'HTTP 500'"
        )
        await add_attempt(con, pid, "e", 1, now, "retry")
        d_rows = await duck.list_deliveries(DeliveryFilter(), 10, None)
        p_rows = await admin.list_deliveries(con, DeliveryFilter(), 10, None)
        assert [_shape(r) for r in p_rows.items] == [_shape(r) for r in d_rows.items]
        d_att = await duck.list_attempts(d_hook["webhook_id"], "e")
        p_att = await admin.list_attempts(con, pid, "e")
        assert [_shape(a) for a in p_att] == [_shape(a) for a in d_att]
        assert [
            {k: v for k, v in a.items() if k not in {"attempt_id", "webhook_id", "attempted_at"}}
            for a in p_att
        ] == [
            {k: v for k, v in a.items() if k not in {"attempt_id", "webhook_id", "attempted_at"}}
            for a in d_att
        ]
        d_status = await duck.status()
        p_status = await admin.status(con)
        assert set(vars_of(p_status)) == set(vars_of(d_status))
        assert p_status.by_status == d_status.by_status
        assert (p_status.scanner_lag_events, p_status.webhooks_active) == (
            d_status.scanner_lag_events,
            d_status.webhooks_active,
        )
    finally:
        await duck.close()


def vars_of(report: Any) -> dict[str, Any]:
    return {name: getattr(report, name) for name in report.__slots__}
