"""The events the DuckDB ingest writer commits are handed to the main writer's next scan
(store/duckdb/fresh.py), which then does not read them back: only when they cover every
seq after its cursor, or it reads. On a real DuckDB file: the ingest writer's cursor, and
the main writer's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.duckdb_cursor import Counting, counting_cursor, in_transaction
from webhookd.events import parse_event
from webhookd.store.base import ClaimRequest, WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.duckdb.common import Cursor
from webhookd.store.duckdb.fresh import FEW_EVENTS, KEPT_BODY, FreshEvents, Row
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ASK = ClaimRequest(limit=64, per_webhook=8, lease=600.0)


def _row(seq: int) -> Row:
    return (seq, f"e{seq}", "t", None, b"{}", None)


# (the seqs held, the cursor, at most, the seqs handed over or None: read them)
AFTER = [
    ([5, 6, 7], 4, 16, [5, 6, 7]),
    ([5, 6, 7], 5, 16, [6, 7]),
    ([3, 4, 5, 6, 7], 5, 16, [6, 7]),
    ([5, 6, 7], 7, 16, None),  # nothing after the cursor: read (and find nothing)
    ([6, 7], 4, 16, None),  # seq 5 unknown: another writer's, or rolled back
    ([5, 7], 4, 16, None),  # a gap inside
    ([5, 6, 7], 4, 2, None),  # more than a few
    ([], 4, 16, None),
]


@pytest.mark.parametrize(("held", "cursor", "most", "expected"), AFTER)
def test_events_are_handed_over_only_when_they_cover_every_seq_after_the_cursor(
    held: list[int], cursor: int, most: int, expected: list[int] | None
) -> None:
    fresh = FreshEvents()
    fresh.add(_row(seq) for seq in held)
    rows = fresh.after(cursor, most)
    assert (None if rows is None else [r[0] for r in rows]) == expected


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Counting]:
    with counting_cursor(tmp_path) as cur:
        cur.fresh = FreshEvents()
        yield cur


@pytest.fixture
def ingests(con: Counting) -> Cursor:
    """The ingest writer's cursor: another cursor of the same connection."""
    return Cursor(con._cur.cursor(), con._disk)


def _ingest(cur: Cursor, event_id: str, **fields: Any) -> None:
    event = parse_event({"id": event_id, "type": "t", "data": {}, **fields}, 0, utcnow())
    in_transaction(cur, batches.ingest, [[event]])


def _queue(con: Counting) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in con.execute(
            "SELECT webhook_id, event_id, status, body, seq, traceparent"
            " FROM webhook_delivery_queue ORDER BY seq"
        ).fetchall()
    ]


def test_a_committed_event_is_scanned_without_reading_it_back(
    con: Counting, ingests: Cursor
) -> None:
    in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)],
    )
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _ingest(ingests, "e1", traceparent=trace, tenant=None)
    assert con.fresh is not None
    con.fresh.add(ingests.take_notes())
    con.ran.clear()
    con.execute("BEGIN TRANSACTION")
    (handed,) = batches.scan(con, [(500, ASK, False)])
    handed_queue = _queue(con)
    ran = list(con.ran)
    con.execute("ROLLBACK")
    con.fresh.clear()
    (read,) = in_transaction(con, batches.scan, [(500, ASK, False)])
    assert "scan_few" not in ran and "scan_few" in con.ran
    assert handed_queue == _queue(con)
    assert [(c.event_id, c.body, c.traceparent) for c in handed.claims] == [
        (c.event_id, c.body, c.traceparent) for c in read.claims
    ]
    assert handed_queue[0][5] == trace


def test_what_a_rolled_back_ingest_left_is_not_handed_over(ingests: Cursor) -> None:
    _ingest(ingests, "e1")
    ingests.execute("BEGIN TRANSACTION")
    event = parse_event({"id": "e2", "type": "t", "data": {}}, 0, utcnow())
    batches.ingest(ingests, [[event]])
    ingests.execute("ROLLBACK")
    assert [n[1] for n in ingests.take_notes()] == ["e1"]
    assert ingests.take_notes() == []


def test_an_event_that_took_a_seq_between_is_read_not_skipped(
    con: Counting, ingests: Cursor
) -> None:
    """An operational event (the main writer's own) or a rolled-back ingest leaves the
    handed-over events short of the cursor: the scan reads, and the cursor moves past
    every event either way."""
    in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)],
    )
    _ingest(ingests, "e1")
    ingests.take_notes()  # never handed over
    _ingest(ingests, "e2")
    assert con.fresh is not None
    con.fresh.add(ingests.take_notes())
    con.ran.clear()
    (result,) = in_transaction(con, batches.scan, [(500, ASK, False)])
    assert "scan_few" in con.ran
    assert sorted(c.event_id for c in result.claims) == ["e1", "e2"]


def test_a_large_body_is_not_kept_and_its_event_is_read() -> None:
    fresh = FreshEvents()
    fresh.add([_row(5), (6, "e6", "t", None, b"x" * (KEPT_BODY + 1), None), _row(7)])
    assert fresh.after(4, 16) is None  # 6 is missing: the scan reads
    assert [r[0] for r in fresh.after(6, 16) or []] == [7]


def test_no_more_are_kept_than_a_small_scan_takes() -> None:
    fresh = FreshEvents()
    fresh.add(_row(seq) for seq in range(1, FEW_EVENTS + 6))
    assert fresh.after(0, 100) is None  # the first ones were let go: read
    assert [r[0] for r in fresh.after(5, 100) or []] == list(range(6, FEW_EVENTS + 6))
