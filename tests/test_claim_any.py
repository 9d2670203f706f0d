"""A DuckDB claim after one that found nothing asks first whether any row is due
(claim_any) and stops there if none is: at low rates most claims find nothing, and their
other statements cost DuckDB more than the question. On a real DuckDB file, through the
main writer's remembering cursor."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from webhookd.events import parse_event
from webhookd.store.base import WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.duckdb.common import Cursor
from webhookd.store.duckdb.disk import Disk
from webhookd.store.duckdb.migrate import migrate, open_connection
from webhookd.store.duckdb.queries import queries
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ASK = (64, 8, 600.0, {})
HOOK = ("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)


class Counting(Cursor):
    """The main writer's cursor, naming each statement it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names = {sql: name for name, sql in queries().items()}
        self.ran: list[str] = []

    def execute(self, query: str, parameters: object = None) -> Any:
        self.ran.append(self.names.get(query, query))
        return super().execute(query, parameters)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Counting]:
    path = tmp_path / "q.duckdb"
    raw = open_connection(path, "256MB")
    migrate(raw)
    cur = Counting(raw.cursor(), Disk(path, lambda: None), remembers=True)
    yield cur
    cur.close()
    raw.close()


def _in_transaction(con: Counting, fn: Any, *args: Any) -> Any:
    con.execute("BEGIN TRANSACTION")
    result = fn(con, *args)
    con.execute("COMMIT")
    return result


def _claim(con: Counting) -> list[Any]:
    con.ran.clear()
    ((claims),) = _in_transaction(con, batches.claim, [ASK])
    return list(claims)


def test_an_empty_claim_after_an_empty_claim_asks_only_whether_any_row_is_due(
    con: Counting,
) -> None:
    assert _claim(con) == []
    assert "claim_held" in con.ran  # nothing known yet: the whole claim
    assert _claim(con) == []
    assert "claim_any" in con.ran
    assert "claim_held" not in con.ran and "claim" not in con.ran


def test_a_row_due_after_an_empty_claim_is_claimed(con: Counting) -> None:
    (hook,) = _in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)],
    )
    assert _claim(con) == []
    event = parse_event({"id": "e1", "type": "t", "data": {}}, 0, utcnow())
    _in_transaction(con, batches.ingest, [[event]])
    (scanned,) = _in_transaction(con, batches.scan, [(500, None, False)])
    assert scanned.enqueued == 1
    claims = _claim(con)
    assert [(c.webhook_id, c.event_id) for c in claims] == [(hook.webhook_id, "e1")]
    assert "claim_any" in con.ran  # asked first, found the row, went on


def test_a_row_that_falls_due_later_is_claimed_after_empty_claims(con: Counting) -> None:
    """A retry whose time comes: claim_any compares with the claim's own now."""
    (hook,) = _in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)],
    )
    now = utcnow()
    con.execute(
        "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
        "retry_base, next_attempt_at, body, created_at, updated_at, seq) "
        "VALUES (?, 'e1', 'pending', 1, 0, ?, '{}'::BLOB, ?, ?, 1)",
        [hook.webhook_id, now + timedelta(days=1), now, now],
    )
    assert _claim(con) == [] and _claim(con) == []
    con.execute(
        "UPDATE webhook_delivery_queue SET next_attempt_at = ?", [now - timedelta(seconds=1)]
    )
    assert [c.event_id for c in _claim(con)] == ["e1"]
