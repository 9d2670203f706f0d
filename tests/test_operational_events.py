"""Operational events (SPEC "Operational events"): webhookd reports what happens to its
webhooks as events of its own, through the same queue, in the transaction of the change;
bounded, scoped by tenant, never looping; on both engines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import (
    DUCKDB_IN_PROCESS,
    Api,
    PgCluster,
    make_settings,
    open_store,
    running,
)
from tests.receivers import RecordedRequest, Recorder, Reply
from tests.test_ordering_and_limits import database
from webhookd.api.render import webhook_json
from webhookd.events import parse_event
from webhookd.queue import operational as op
from webhookd.states import Status
from webhookd.store.base import Outcome, Store
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.records import utcnow

DEADLINE = 30.0
OPERATIONAL = list(op.TYPES)


def _bodies(requests: list[RecordedRequest], event_type: str | None = None) -> list[Any]:
    bodies = [json.loads(r.body) for r in requests]
    return [b for b in bodies if event_type is None or b["type"] == event_type]


async def _wait_for(rx: Recorder, event_type: str, count: int = 1) -> list[Any]:
    async with asyncio.timeout(DEADLINE):
        while len(found := _bodies(rx.requests, event_type)) < count:
            await rx.wait_for_requests(len(rx.requests) + 1, deadline=DEADLINE)
    return found


async def test_producers_may_not_post_webhookd_types(tmp_path: Path) -> None:
    async with running(make_settings(tmp_path)) as d, Api(d.url) as api:
        status, body = await api.request(
            "POST", "/v1/events", [{"type": "t", "data": 1}, {"type": op.DISABLED, "data": {}}]
        )
    assert status == 400, body
    assert body["error"]["message"].startswith("events[1].type"), body


async def test_failing_then_auto_disabled_are_reported_once_to_subscribers_only(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The failing webhook is reported failing once, then disabled with the reason; a
    webhook that takes every type hears neither, the one subscribed hears both."""
    settings = make_settings(
        tmp_path,
        database=database(engine, request),
        delivery={"disable_after": "3s", "max_attempts": 1000},
        operational={"failing_after": "1s"},
    )
    async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
        rx.reply_on("/failing", Reply(500))
        operator = await api.create_webhook(rx.url + "/operator", event_types=OPERATIONAL)
        await api.create_webhook(rx.url + "/everything")
        failing = (await api.create_webhook(rx.url + "/failing"))["webhook_id"]
        await api.emit({"type": "t", "data": {}})
        (disabled,) = await _wait_for(rx, op.DISABLED)
        received = [r for r in rx.requests if r.path == "/operator"]
    assert [b["type"] for b in _bodies(received)] == [op.FAILING, op.DISABLED]
    failing_event = _bodies(received)[0]
    assert failing_event["data"]["webhook_id"] == failing
    assert failing_event["data"]["tenant"] is None
    assert disabled["data"]["webhook_id"] == failing
    assert "every attempt failed since" in disabled["data"]["reason"]
    everything = _bodies([r for r in rx.requests if r.path == "/everything"])
    assert [b["type"] for b in everything] == ["t"]
    assert operator["webhook_id"] != failing


async def test_recovered_follows_failing_once_it_delivers_again(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        database=database(engine, request),
        delivery={"max_attempts": 1000},
        operational={"failing_after": "1s"},
    )
    async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
        rx.reply_on("/flaky", Reply(500))
        await api.create_webhook(rx.url + "/operator", event_types=OPERATIONAL)
        wid = (await api.create_webhook(rx.url + "/flaky"))["webhook_id"]
        await api.emit({"type": "t", "data": {}})
        (failing,) = await _wait_for(rx, op.FAILING)
        rx.reply_on("/flaky", Reply(200))
        (recovered,) = await _wait_for(rx, op.RECOVERED)
        types = [b["type"] for b in _bodies([r for r in rx.requests if r.path == "/operator"])]
    assert types == [op.FAILING, op.RECOVERED]
    assert recovered["data"]["webhook_id"] == wid
    assert recovered["data"]["failing_since"] == failing["data"]["failing_since"]


async def test_a_410_reports_disabled_and_enabling_reports_enabled_scoped_by_tenant(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A tenant's webhook answers 410: its tenant's subscriber and the operator's (no
    tenant) hear it, another tenant's does not; then enabling it is reported the same way."""
    settings = make_settings(tmp_path, database=database(engine, request))
    async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
        rx.reply_on("/gone", Reply(410))
        types = [op.DISABLED, op.ENABLED]
        await api.create_webhook(rx.url + "/operator", event_types=types)
        await api.create_webhook(rx.url + "/acme", event_types=types, tenant="acme")
        await api.create_webhook(rx.url + "/globex", event_types=types, tenant="globex")
        gone = (await api.create_webhook(rx.url + "/gone", tenant="acme"))["webhook_id"]
        await api.emit({"type": "t", "data": {}, "tenant": "acme"})
        await _wait_for(rx, op.DISABLED, 2)
        rx.reply_on("/gone", Reply(200))
        await api.ok("PATCH", f"/v1/webhooks/{gone}", {"active": True})
        await _wait_for(rx, op.ENABLED, 2)
        await _wait_for_path(rx, "/gone", 2)  # the parked row went out again
    by_path: dict[str, list[Any]] = {}
    for r in rx.requests:
        by_path.setdefault(r.path, []).append(json.loads(r.body))
    for path in ("/operator", "/acme"):
        assert [b["type"] for b in by_path[path]] == types, path
        disabled = by_path[path][0]["data"]
        assert disabled["webhook_id"] == gone and disabled["tenant"] == "acme"
        assert disabled["reason"] == "the endpoint answered 410 Gone"
    assert "/globex" not in by_path


async def _wait_for_path(rx: Recorder, path: str, count: int) -> None:
    async with asyncio.timeout(DEADLINE):
        while sum(r.path == path for r in rx.requests) < count:
            await rx.wait_for_requests(len(rx.requests) + 1, deadline=DEADLINE)


async def test_an_operators_failing_endpoint_causes_no_operational_event(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The operator's endpoint answers 410 to the report of a 410, and another operator
    endpoint lets its reports go dead: neither produces a report of its own."""
    settings = make_settings(
        tmp_path, database=database(engine, request), delivery={"max_attempts": 2}
    )
    async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
        rx.reply_on("/gone", Reply(410))
        rx.reply_on("/operator-gone", Reply(410))
        rx.reply_on("/operator-dead", Reply(500))
        await api.create_webhook(rx.url + "/operator-gone", event_types=OPERATIONAL)
        dead_hook = await api.create_webhook(rx.url + "/operator-dead", event_types=OPERATIONAL)
        await api.create_webhook(rx.url + "/watcher", event_types=OPERATIONAL)
        await api.create_webhook(rx.url + "/gone")
        await api.emit({"type": "t", "data": {}})
        await _wait_for_path(rx, "/operator-gone", 1)
        # The report's delivery to operator-dead ends dead after its two attempts.
        await api.wait_status({"dead": 1}, deadline=DEADLINE, webhook_id=dead_hook["webhook_id"])
        # A marker event after both: once it arrives, anything they caused would have too.
        marker = await api.create_webhook(rx.url + "/gone2")
        rx.reply_on("/gone2", Reply(410))
        await api.ok("PATCH", f"/v1/webhooks/{marker['webhook_id']}", {"event_types": ["m"]})
        await api.emit({"type": "m", "data": {}})
        await _wait_for_path(rx, "/watcher", 2)
    watched = _bodies([r for r in rx.requests if r.path == "/watcher"])
    assert [(b["type"], b["data"]["webhook_id"]) for b in watched] == [
        (op.DISABLED, watched[0]["data"]["webhook_id"]),
        (op.DISABLED, marker["webhook_id"]),
    ]


async def _claim_all(store: Store) -> list[Any]:
    claims: list[Any] = []
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        got = await store.claim(1000, 10_000, 60.0)
        if not got:
            return claims
        claims += got
    raise AssertionError("claims never ran out")


def _dead(claim: Any) -> Outcome:
    now = utcnow()
    return Outcome(
        claim.webhook_id,
        claim.event_id,
        claim.attempt,
        Status.DEAD,
        None,
        now,
        1.0,
        500,
        "HTTP 500",
        "",
        "dead",
        claimed_until=claim.claimed_until,
    )


async def _reports(store: Store, operator: str) -> list[Any]:
    await store.scan(1000)
    return [json.loads(c.body) for c in await _claim_all(store) if c.webhook_id == operator]


@pytest.mark.parametrize("engine", [DUCKDB_IN_PROCESS, "postgresql"])
async def test_ten_thousand_dead_deliveries_yield_one_report_a_minute_with_the_count(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """10,000 deliveries of one webhook go dead in batches: one webhookd.delivery.dead at
    once (the first batch), the rest tallied; once the window has passed (its start moved
    back in the table), the next upkeep reports the rest, first and last ids included."""
    store = open_store(engine, request, tmp_path)
    await store.open()
    try:
        await _ten_thousand_dead(store, request)
    finally:
        await store.close()


async def _ten_thousand_dead(store: Store, request: pytest.FixtureRequest) -> None:
    hook = webhook_json(
        await store.create_webhook("http://127.0.0.1:9/x", ["t"], "whsec_" + "A" * 32, "")
    )
    operator = webhook_json(
        await store.create_webhook("http://127.0.0.1:9/op", [op.DEAD], "whsec_" + "B" * 32, "")
    )
    now = utcnow()
    n = 10_000
    ids = [f"e{i:05d}" for i in range(n)]
    for start in range(0, n, 1000):
        await store.ingest(
            [
                parse_event({"id": i, "type": "t", "data": {}}, 0, now)
                for i in ids[start : start + 1000]
            ]
        )
    while (await store.scan(1000)).events:
        pass
    claims = await _claim_all(store)
    assert len(claims) == n
    for start in range(0, n, 500):
        batch = claims[start : start + 500]
        await asyncio.gather(*(store.record(_dead(c)) for c in batch))
    first = await _reports(store, operator["webhook_id"])
    assert [b["type"] for b in first] == [op.DEAD]
    reported = first[0]["data"]
    assert reported["webhook_id"] == hook["webhook_id"]
    # The upkeep inside the window reports nothing more.
    await store.auto_disable(now - timedelta(days=1), None)
    assert await _reports(store, operator["webhook_id"]) == []
    await _age_dead_report(store, request, hook["webhook_id"])
    await store.auto_disable(now - timedelta(days=1), None)
    second = await _reports(store, operator["webhook_id"])
    assert [b["type"] for b in second] == [op.DEAD]
    rest = second[0]["data"]
    assert 0 < reported["count"] < n and reported["count"] + rest["count"] == n
    for data in (reported, rest):
        assert data["first_event_id"] in ids and data["last_event_id"] in ids


async def _age_dead_report(store: Store, request: pytest.FixtureRequest, webhook_id: str) -> None:
    """Move the last dead report two minutes back: the window has passed."""
    sql = (
        "UPDATE webhooks SET dead_reported_at = dead_reported_at - INTERVAL 2 MINUTE "
        "WHERE webhook_id = ?"
    )
    if isinstance(store, DuckDBStore):
        await store._write(_run_sql(sql, webhook_id), None)
    else:
        pg: PgCluster = request.getfixturevalue("pg")
        schema: str = request.getfixturevalue("pg_schema")
        con = await asyncpg.connect(pg.url)
        try:
            await con.execute(
                f"UPDATE {schema}.webhooks SET dead_reported_at = dead_reported_at "
                "- interval '2 minutes' WHERE webhook_id = $1",
                webhook_id,
            )
        finally:
            await con.close()


def _run_sql(sql: str, *params: Any) -> Any:
    def run(con: Any, payloads: Any) -> list[None]:
        con.execute(sql, list(params))
        return [None] * len(payloads)

    return run


def _failed(claim: Any) -> Outcome:
    now = utcnow()
    return Outcome(
        claim.webhook_id,
        claim.event_id,
        claim.attempt,
        Status.PENDING,
        now + timedelta(hours=1),
        now,
        1.0,
        500,
        "HTTP 500",
        "",
        "retry",
        claimed_until=claim.claimed_until,
    )


class Refused(Exception):
    pass


@pytest.mark.parametrize("engine", [DUCKDB_IN_PROCESS, "postgresql"])
async def test_an_auto_disable_that_rolls_back_reports_nothing_one_that_commits_reports_it(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing the report fails (DuckDB: the write raises; PostgreSQL: a trigger refuses
    the event): the webhook stays active and nothing is reported. Then it commits: the
    webhook is disabled and reported once."""
    store = open_store(engine, request, tmp_path)
    await store.open()
    try:
        hook = webhook_json(
            await store.create_webhook("http://127.0.0.1:9/x", [], "whsec_" + "A" * 32, "")
        )
        operator = webhook_json(
            await store.create_webhook(
                "http://127.0.0.1:9/op", [op.DISABLED], "whsec_" + "B" * 32, ""
            )
        )
        await store.ingest([parse_event({"type": "t", "data": {}}, 0, utcnow())])
        await store.scan(10)
        (claim,) = await _claim_all(store)
        await store.record(_failed(claim))
        later = utcnow() + timedelta(seconds=1)
        if isinstance(store, DuckDBStore):
            from webhookd.store.duckdb import operational as duck

            real = duck.write

            def refusing(con: Any, events: Any, now: Any) -> None:
                real(con, events, now)
                if events:
                    raise Refused("the report cannot be written")

            monkeypatch.setattr(duck, "write", refusing)
            with pytest.raises(Exception):  # noqa: B017 - whatever the writer makes of it
                await store.auto_disable(later, None)
            monkeypatch.setattr(duck, "write", real)
        else:
            schema: str = request.getfixturevalue("pg_schema")
            pg: PgCluster = request.getfixturevalue("pg")
            con = await asyncpg.connect(pg.url)
            try:
                await con.execute(
                    f"""
                    CREATE FUNCTION {schema}.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN RAISE EXCEPTION 'the report cannot be written'; END $$;
                    CREATE TRIGGER refuse BEFORE INSERT ON {schema}.pipeline_events
                    FOR EACH ROW WHEN (starts_with(NEW.event_type, 'webhookd.'))
                    EXECUTE FUNCTION {schema}.refuse();
                    """
                )
                with pytest.raises(Exception):  # noqa: B017
                    await store.auto_disable(later, None)
                await con.execute(f"DROP TRIGGER refuse ON {schema}.pipeline_events")
            finally:
                await con.close()
        assert (await store.get_webhook(hook["webhook_id"])).active is True
        assert await _reports(store, operator["webhook_id"]) == []
        assert await store.auto_disable(later, None) == [hook["webhook_id"]]
        assert (await store.get_webhook(hook["webhook_id"])).active is False
        reports = await _reports(store, operator["webhook_id"])
        assert [(b["type"], b["data"]["webhook_id"]) for b in reports] == [
            (op.DISABLED, hook["webhook_id"])
        ]
    finally:
        await store.close()


async def test_two_daemons_on_postgresql_report_each_change_once(
    pg: PgCluster, pg_schema: str, tmp_path: Path
) -> None:
    """Two daemons on one queue record dead deliveries of one webhook side by side and
    one of them (the leader) auto-disables it: one webhookd.delivery.dead report (within
    the minute), whose count and the tally still to report add up to every dead delivery
    exactly, and one webhookd.webhook.disabled."""
    n = 200
    sections: dict[str, Any] = {
        "database": {"url": pg.url, "schema": pg_schema},
        "delivery": {"max_attempts": 1, "disable_after": "5s"},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_settings(tmp_path / "a", **sections)
    second = make_settings(tmp_path / "b", **sections)
    async with Recorder() as rx, running(first) as a, running(second), Api(a.url) as api:
        rx.reply_on("/failing", Reply(500))
        await api.create_webhook(rx.url + "/operator", event_types=OPERATIONAL)
        wid = (await api.create_webhook(rx.url + "/failing"))["webhook_id"]
        await api.emit([{"type": "t", "data": {"i": i}} for i in range(n)])
        await api.wait_status({"dead": n}, deadline=DEADLINE, webhook_id=wid)
        await _wait_for(rx, op.DISABLED)
        con = await asyncpg.connect(pg.url)
        try:
            rows = await con.fetch(
                f"SELECT event_type, payload FROM {pg_schema}.pipeline_events "
                "WHERE starts_with(event_type, 'webhookd.') AND payload->>'webhook_id' = $1",
                wid,
            )
            tally = await con.fetchval(
                f"SELECT dead_count FROM {pg_schema}.webhooks WHERE webhook_id = $1", wid
            )
        finally:
            await con.close()
    by_type: dict[str, list[Any]] = {}
    for row in rows:
        by_type.setdefault(row["event_type"], []).append(json.loads(row["payload"]))
    assert len(by_type[op.DISABLED]) == 1
    assert len(by_type[op.DEAD]) == 1
    assert by_type[op.DEAD][0]["count"] + tally == n


async def test_an_outbox_event_of_a_webhookd_type_is_set_aside(
    pg: PgCluster, pg_schema: str, tmp_path: Path
) -> None:
    """A producer writing a webhookd.* event in SQL reaches no one: the scan sets it aside
    in rejected_events, and the event after it is delivered as usual."""
    settings = make_settings(tmp_path, database={"url": pg.url, "schema": pg_schema})
    async with Recorder() as rx, running(settings) as d, Api(d.url) as api:
        await api.create_webhook(rx.url + "/operator", event_types=[op.DISABLED, "t"])
        con = await asyncpg.connect(pg.url)
        try:
            for event_id, event_type in (("forged", op.DISABLED), ("after", "t")):
                await con.execute(
                    f"INSERT INTO {pg_schema}.pipeline_events (event_id, event_type, payload) "
                    "VALUES ($1, $2, '{}')",
                    event_id,
                    event_type,
                )
            (received,) = await rx.wait_for_requests(1, deadline=DEADLINE)
            rejected = await con.fetch(f"SELECT event_id, error FROM {pg_schema}.rejected_events")
        finally:
            await con.close()
    assert received.headers["webhook-id"] == "after"
    assert [r["event_id"] for r in rejected] == ["forged"]
    assert "operational" in rejected[0]["error"]


async def _at_once(con: Any, webhook_id: str, *calls: Awaitable[list[str]]) -> list[list[str]]:
    """Run the upkeep `calls` of several daemons so that they meet: a transaction of `con`
    holds the webhook's row until every one of them waits on it, then lets them go."""
    async with con.transaction():
        await con.execute("SELECT 1 FROM webhooks WHERE webhook_id = $1 FOR UPDATE", webhook_id)
        together = asyncio.gather(*calls)
        end = time.monotonic() + DEADLINE
        while await con.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ) < len(calls):
            assert time.monotonic() < end, "the daemons' upkeep never waited on the row"
            await asyncio.sleep(0.01)
    return await together


async def test_two_postgresql_daemons_reporting_one_webhook_at_once_report_it_once(
    stores: Any, con: Any
) -> None:
    """The race the leader election makes rare, forced: two daemons' upkeep reports the
    same failing webhook at the same moment, then disables it at the same moment (each
    time both wait on its row, held by a third transaction, then go together). Each change
    is reported once: one webhookd.webhook.failing, one webhookd.webhook.disabled."""
    a = await stores()
    b = await stores()
    hook = webhook_json(await a.create_webhook("http://127.0.0.1:9/x", [], "whsec_" + "A" * 32, ""))
    wid = hook["webhook_id"]
    await a.ingest([parse_event({"type": "t", "data": {}}, 0, utcnow())])
    await a.scan(10)
    (claim,) = await _claim_all(a)
    await a.record(_failed(claim))
    later = utcnow() + timedelta(seconds=1)
    long_ago = utcnow() - timedelta(days=1)

    async def reports() -> list[str]:
        rows = await con.fetch(
            "SELECT event_type FROM pipeline_events "
            "WHERE starts_with(event_type, 'webhookd.') AND payload->>'webhook_id' = $1 "
            "ORDER BY seq",
            wid,
        )
        return [r["event_type"] for r in rows]

    await _at_once(con, wid, a.auto_disable(long_ago, later), b.auto_disable(long_ago, later))
    assert (await a.get_webhook(wid)).active is True
    assert await reports() == [op.FAILING]
    disabled_by = await _at_once(
        con, wid, a.auto_disable(later, later), b.auto_disable(later, later)
    )
    assert sorted(map(len, disabled_by)) == [0, 1]
    assert (await a.get_webhook(wid)).active is False
    assert await reports() == [op.FAILING, op.DISABLED]
