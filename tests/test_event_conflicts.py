"""SPEC: a re-post of an event id is the same event when its type and its canonical data
bytes are the same; anything else is a conflict (409). One rule (webhookd/queue/conflicts.py)
on every engine."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.pg import PgCluster
from webhookd.events import NewEvent, parse_event
from webhookd.store.base import EventConflict, Store
from webhookd.store.postgres import PostgresStore


def event(event_id: str, data: Any, event_type: str = "t") -> NewEvent:
    return parse_event(
        {"id": event_id, "type": event_type, "data": data}, 0, datetime.now().astimezone()
    )


async def test_one_and_one_point_zero_are_other_content(store: Store) -> None:
    """{"a":1} and {"a":1.0} have other canonical bytes (receivers get other bodies)."""
    await store.ingest([event("r1", {"a": 1})])
    with pytest.raises(EventConflict) as info:
        await store.ingest([event("r1", {"a": 1.0})])
    assert info.value.event_ids == ["r1"]


async def test_numbers_written_otherwise_but_the_same_canonically_are_the_same(
    store: Store,
) -> None:
    """1e2 and 100.0 parse to the same float: the same canonical bytes, a re-post."""
    await store.ingest([event("r1", {"a": 100.0, "b": [1, {"c": "é"}]})])
    raw = '{"b":[1,{"c":"\\u00e9"}],"a":1e2}'
    again = await store.ingest([event("r1", json.loads(raw))])
    assert again.inserted == 0


async def test_a_big_integer_and_the_float_of_the_same_value_differ(store: Store) -> None:
    """10000000000000000 and 1e16 are equal numbers to a database's JSON type, not the
    same bytes."""
    await store.ingest([event("r1", {"a": 10000000000000000})])
    with pytest.raises(EventConflict):
        await store.ingest([event("r1", {"a": 1e16})])


async def test_within_one_request_the_same_rule_holds(store: Store) -> None:
    with pytest.raises(EventConflict) as info:
        await store.ingest([event("r1", {"a": 1}), event("r1", {"a": 1.0})])
    assert info.value.event_ids == ["r1"]
    result = await store.ingest([event("r2", {"a": 1}), event("r2", {"a": 1})])
    assert result.inserted == 1


async def test_an_event_written_in_sql_is_compared_by_its_canonical_data(
    pg: PgCluster, pg_schema: str
) -> None:
    """PostgreSQL: an event a producer wrote with publish() has no body until scanned;
    a re-post through the API compares with its data made canonical as the scanner will
    make it: the same data is a re-post, 1.0 for 1 a conflict."""
    store = PostgresStore(pg.url, schema=pg_schema, pool_size=2)
    await store.open()
    try:
        con = await asyncpg.connect(pg.url, server_settings={"search_path": pg_schema})
        try:
            await con.fetchval("""SELECT publish('p1', 't', '{"b": [1], "a": 1}')""")
        finally:
            await con.close()
        again = await store.ingest([event("p1", {"a": 1, "b": [1]})])
        assert again.inserted == 0
        with pytest.raises(EventConflict):
            await store.ingest([event("p1", {"a": 1.0, "b": [1]})])
    finally:
        await store.close()
