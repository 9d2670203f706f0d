"""Producers that write the outbox in SQL, as a busy application's database sees them
(issue 22): they cannot choose where an event stands in the scanner's order nor what is
sent, an event that cannot be delivered is set aside without stopping the ones after it,
and a producer role needs only EXECUTE on publish() (or INSERT on the columns it writes)
and can read nothing else."""

from __future__ import annotations

import json
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.conftest import Api, make_settings, running
from tests.pg import PgCluster
from tests.pg_stores import Make, poll, scan_all
from tests.test_postgres_engine import DEADLINE, Q, events, hook
from webhookd import events as events_module
from webhookd.events import canonical_json


def expected_body(event_id: str, event_type: str, occurred: Any, data: Any) -> bytes:
    return events_module.body(
        event_id, event_type, occurred.replace(tzinfo=UTC), canonical_json(data)
    )


async def test_a_producer_cannot_set_xid_seq_or_body(stores: Make, con: Any) -> None:
    """An INSERT that names xid, seq and body gets the transaction's xid, a fresh seq and
    the body the daemon builds: the event is neither put below the cursor nor sent with
    bytes the producer chose."""
    store = await stores()
    webhook = await hook(store)
    await store.ingest(events("first"))
    assert await scan_all(store) == 1  # the cursor is now past a real transaction's xid
    first_seq = await con.fetchval("SELECT seq FROM pipeline_events WHERE event_id = 'first'")

    forged = b'{"id":"someone-else","type":"admin.granted","timestamp":"x","data":{}}'
    async with con.transaction():
        xid = await con.fetchval("SELECT pg_current_xact_id()::text")
        await con.execute(
            "INSERT INTO pipeline_events (event_id, event_type, payload, xid, seq, body) "
            "OVERRIDING SYSTEM VALUE VALUES ('sneaky', 'order.paid', '{\"n\": 1}', '5', 1, $1)",
            forged,
        )
    row = await con.fetchrow(
        "SELECT xid::text, seq, body, occurred_at FROM pipeline_events WHERE event_id = 'sneaky'"
    )
    assert row["xid"] == xid
    assert row["seq"] > first_seq
    assert row["body"] is None  # the scanner builds it

    # A later UPDATE cannot move it either.
    await con.execute("UPDATE pipeline_events SET xid = '5' WHERE event_id = 'sneaky'")
    assert (
        await con.fetchval("SELECT xid::text FROM pipeline_events WHERE event_id = 'sneaky'") == xid
    )

    assert (await store.status()).scanner_lag_events == 1
    assert await scan_all(store) == 1
    body = await con.fetchval(f"SELECT body FROM {Q} WHERE webhook_id = $1 AND event_id = 'sneaky'",
                             webhook)  # fmt: skip
    assert body == expected_body("sneaky", "order.paid", row["occurred_at"], {"n": 1})
    assert json.loads(body)["id"] == "sneaky"
    # Nor can a producer replace a body the daemon stored.
    await con.execute("UPDATE pipeline_events SET body = $1 WHERE event_id = 'sneaky'", forged)
    assert await con.fetchval("SELECT body FROM pipeline_events WHERE event_id = 'sneaky'") == body


async def test_the_daemons_own_ingest_keeps_its_body(stores: Make, con: Any) -> None:
    store = await stores()
    (event,) = events("api")
    await store.ingest([event])
    stored = await con.fetchval("SELECT body FROM pipeline_events WHERE event_id = 'api'")
    assert stored == event.body


async def test_an_event_with_a_time_out_of_range_is_refused_or_set_aside(
    stores: Make, con: Any
) -> None:
    """publish() of a time Python cannot carry is refused by the table; such a row stored
    before the check (or by any other way around it) is set aside with its reason and
    counted, and the events after it are delivered."""
    store = await stores()
    webhook = await hook(store)
    with pytest.raises(asyncpg.CheckViolationError):
        await con.fetchval("SELECT publish('bc', 't', '{}', '0001-01-01 BC')")
    with pytest.raises(asyncpg.CheckViolationError):
        await con.execute(
            "INSERT INTO pipeline_events (event_id, event_type, payload, occurred_at) "
            "VALUES ('y10k', 't', '{}', '10000-01-01')"
        )
    # A row from before the constraint (NOT VALID: old rows are not checked).
    await con.execute(
        "ALTER TABLE pipeline_events DROP CONSTRAINT IF EXISTS pipeline_events_occurred_at_in_range"
    )
    await con.execute(
        "INSERT INTO pipeline_events (event_id, event_type, payload, occurred_at) "
        "VALUES ('old-bc', 't', '{}', '0001-01-01 BC'), ('old-y10k', 't', '{}', 'infinity')"
    )
    await con.fetchval("SELECT publish('after', 't', '{}')")

    assert await scan_all(store) == 3
    queued = {r[0] for r in await con.fetch(f"SELECT event_id FROM {Q} WHERE webhook_id = $1",
                                           webhook)}  # fmt: skip
    assert queued == {"after"}
    rejected = dict(await con.fetch("SELECT event_id, error FROM rejected_events"))
    assert set(rejected) == {"old-bc", "old-y10k"}
    assert "out of range" in rejected["old-bc"]
    assert (await store.status()).events_rejected == 2


async def test_an_outbox_event_over_the_size_limit_is_set_aside(stores: Make, con: Any) -> None:
    """Data over admin.max_body_bytes written in SQL is set aside with its reason, not
    sent and not loaded into the scan: the events after it are delivered."""
    store = await stores(max_event_bytes=4096)
    webhook = await hook(store)
    await con.fetchval("SELECT publish('big', 't', $1::jsonb)", json.dumps({"x": "a" * 10_000}))
    await con.fetchval("SELECT publish('small', 't', $1::jsonb)", json.dumps({"x": "a" * 1000}))
    assert await scan_all(store) == 2
    queued = {r[0] for r in await con.fetch(f"SELECT event_id FROM {Q} WHERE webhook_id = $1",
                                           webhook)}  # fmt: skip
    assert queued == {"small"}
    error = await con.fetchval("SELECT error FROM rejected_events WHERE event_id = 'big'")
    assert "admin.max_body_bytes" in error
    assert (await store.status()).events_rejected == 1


async def test_readyz_says_so_when_the_scanner_keeps_failing(
    tmp_path: Path, pg: PgCluster, pg_schema: str, con: Any
) -> None:
    settings = make_settings(tmp_path, database={"url": pg.url, "schema": pg_schema})
    async with running(settings) as d, Api(d.url) as api:
        assert (await api.request("GET", "/readyz"))[0] == 200
        await con.execute("CREATE TEMP TABLE saved AS SELECT * FROM scanner_cursor")
        await con.execute("DELETE FROM scanner_cursor WHERE name = 'main'")  # every scan fails

        async def not_ready() -> bool:
            status, body = await api.request("GET", "/readyz")
            return status == 503 and body["checks"]["scanner"] is False

        await poll(not_ready, DEADLINE, "/readyz to report the failing scanner")
        await con.execute("INSERT INTO scanner_cursor SELECT * FROM saved")

        async def ready() -> bool:
            return (await api.request("GET", "/readyz"))[0] == 200

        await poll(ready, DEADLINE, "/readyz to recover with the scanner")


async def test_a_producer_role_publishes_and_inserts_and_reads_nothing(
    stores: Make, pg: PgCluster, pg_schema: str, con: Any
) -> None:
    """The grants README "Scaling out" documents: USAGE on the schema, EXECUTE on publish()
    and INSERT on (event_id, event_type, payload, occurred_at). publish() runs with its
    owner's rights and a search_path no temporary table can enter."""
    store = await stores()
    webhook = await hook(store)
    await store.ingest(events("someone-elses"))
    role = "producer_" + uuid.uuid4().hex[:8]
    s = f'"{pg_schema}"'
    await con.execute(f"CREATE ROLE {role} LOGIN")
    try:
        await con.execute(f"GRANT USAGE ON SCHEMA {s} TO {role}")
        await con.execute(
            f"GRANT EXECUTE ON FUNCTION {s}.publish(text, text, jsonb, timestamptz, text, text) "
            f"TO {role}"
        )
        await con.execute(
            f"GRANT INSERT (event_id, event_type, payload, occurred_at, tenant) "
            f"ON {s}.pipeline_events TO {role}"
        )
        producer = await asyncpg.connect(pg.url.replace("postgres@", f"{role}@"))
        try:
            # A temporary table of the producer's cannot stand in for the real one.
            await producer.execute(
                "CREATE TEMP TABLE pipeline_events (event_id text, event_type text, "
                "payload jsonb, occurred_at timestamp)"
            )
            assert await producer.fetchval(f"SELECT {s}.publish('p1', 't', '{{\"n\": 1}}')") == "p1"
            # A retried transaction: the same event again is accepted, other content is not.
            assert await producer.fetchval(f"SELECT {s}.publish('p1', 't', '{{\"n\": 1}}')") == "p1"
            with pytest.raises(asyncpg.UniqueViolationError):
                await producer.fetchval(f"SELECT {s}.publish('p1', 't', '{{\"n\": 2}}')")
            await producer.execute(
                f"INSERT INTO {s}.pipeline_events (event_id, event_type, payload) "
                "VALUES ('p2', 't', '{\"n\": 2}')"
            )
            assert await producer.fetchval("SELECT count(*) FROM pg_temp.pipeline_events") == 0
            for table in ("pipeline_events", "webhooks", Q, "webhook_deliveries"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await producer.fetch(f"SELECT * FROM {s}.{table}")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await producer.execute(
                    f"INSERT INTO {s}.pipeline_events (event_id, event_type, payload, body) "
                    "VALUES ('p3', 't', '{}', '\\x00')"
                )
        finally:
            await producer.close()
        assert await scan_all(store) == 3
        queued = {r[0] for r in await con.fetch(f"SELECT event_id FROM {Q} WHERE webhook_id = $1",
                                               webhook)}  # fmt: skip
        assert queued == {"someone-elses", "p1", "p2"}
    finally:
        await con.execute(f"DROP OWNED BY {role}")
        await con.execute(f"DROP ROLE {role}")
