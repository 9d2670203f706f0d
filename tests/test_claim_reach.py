"""A DuckDB claim reads no more candidate rows than it can take when one webhook alone has
room (batches._reach): the room left under that webhook's cap, not four times what the
pool asked. On a real DuckDB file, through the main writer's remembering cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.duckdb_cursor import Counting, counting_cursor, delivered, in_transaction
from webhookd.events import parse_event
from webhookd.store.base import WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.duckdb.queries import query
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Limits(Counting):
    """Also keeps the LIMIT of every claim statement it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits: list[int] = []

    def execute(self, sql: str, parameters: object = None) -> Any:
        if sql == query("claim"):
            assert isinstance(parameters, list)
            self.limits.append(parameters[-1])
        return super().execute(sql, parameters)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Limits]:
    with counting_cursor(tmp_path, Limits) as cur:
        yield cur


def _hook(con: Limits, event_type: str) -> str:
    (hook,) = in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", [event_type], SECRET, "", WebhookLimits(), None)],
    )
    return str(hook.webhook_id)


def _backlog(con: Limits, event_type: str, n: int) -> None:
    now = utcnow()
    events = [
        parse_event({"id": f"{event_type}-{i}", "type": event_type, "data": {}}, 0, now)
        for i in range(n)
    ]
    in_transaction(con, batches.ingest, [events])
    in_transaction(con, batches.scan, [(500, None, False)])


def _claim(con: Limits, limit: int, per_webhook: int) -> list[Any]:
    ((claims),) = in_transaction(con, batches.claim, [(limit, per_webhook, 600.0, {})])
    return list(claims)


def test_a_claim_at_one_webhook_reads_only_the_room_left_under_its_cap(con: Limits) -> None:
    hook = _hook(con, "t")
    _backlog(con, "t", 40)
    first = _claim(con, 64, 5)
    assert len(first) == 5 and con.limits == [5]
    for claim in first[:2]:
        in_transaction(con, batches.record, [delivered(claim)])
    second = _claim(con, 64, 5)
    assert len(second) == 2 and con.limits == [5, 2]
    assert {c.webhook_id for c in first + second} == {hook}
    # At its cap: nothing is read at all.
    assert _claim(con, 64, 5) == [] and con.limits == [5, 2]
    # The oldest rows first, as with any LIMIT.
    assert [c.event_id for c in first + second] == [f"t-{i}" for i in range(7)]


def test_webhooks_with_room_side_by_side_each_fill_theirs_in_one_claim(con: Limits) -> None:
    a, b = _hook(con, "a"), _hook(con, "b")
    _backlog(con, "a", 30)
    _backlog(con, "b", 30)
    claims = _claim(con, 64, 4)
    # a's 30 rows are older than any of b's: a bound of 8 candidates would give b none.
    assert {w: sum(c.webhook_id == w for c in claims) for w in (a, b)} == {a: 4, b: 4}
    assert con.limits == [256]
