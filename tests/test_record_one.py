"""DuckDB records a batch of one outcome with point statements (batches._record_one), any
other batch with the list form (_record_many): both must leave the same queue row and log,
outcome by outcome, on a real DuckDB file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from webhookd.states import Status
from webhookd.store.base import Outcome
from webhookd.store.duckdb import batches
from webhookd.store.duckdb.migrate import migrate, open_connection
from webhookd.store.duckdb.queries import query

T0 = datetime(2026, 12, 7, 12, 0, 0)
LEASE = T0 + timedelta(minutes=10)
NOW = T0 + timedelta(seconds=3)
DELIVERED = Outcome(
    webhook_id="wh_1",
    event_id="evt_1",
    attempt=3,
    status=Status.DELIVERED,
    next_attempt_at=None,
    attempted_at=T0 + timedelta(seconds=2),
    duration_ms=12.5,
    status_code=204,
    error=None,
    response_excerpt="",
    outcome="delivered",
    claimed_until=LEASE,
)

# (case, the row's status before, its lease before, the outcome)
CASES: list[tuple[str, str, datetime | None, Outcome]] = [
    ("delivered", "inflight", LEASE, DELIVERED),
    (
        "retry",
        "inflight",
        LEASE,
        replace(
            DELIVERED,
            status=Status.PENDING,
            next_attempt_at=T0 + timedelta(minutes=5),
            status_code=503,
            error="HTTP 503",
            response_excerpt="busy",
            outcome="retry",
        ),
    ),
    ("dead", "inflight", LEASE, replace(DELIVERED, status=Status.DEAD, outcome="dead")),
    (
        "not spent: attempts and last attempt kept, no log row",
        "inflight",
        LEASE,
        replace(
            DELIVERED,
            status=Status.PENDING,
            next_attempt_at=T0 + timedelta(seconds=4),
            status_code=None,
            error="too many open files",
            outcome="local_failure",
            spent=False,
        ),
    ),
    ("a stale lease changes nothing", "inflight", LEASE + timedelta(minutes=1), DELIVERED),
    ("no lease to match", "inflight", LEASE, replace(DELIVERED, claimed_until=None)),
    ("a row no longer inflight changes nothing", "pending", None, DELIVERED),
]


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    opened: list[Any] = []

    def open_one(name: str) -> Any:
        con = open_connection(tmp_path / f"{name}.duckdb", "256MB")
        migrate(con)
        opened.append(con)
        return con

    yield open_one
    for con in opened:
        con.close()


def _row(con: Any, status: str, lease: datetime | None) -> None:
    con.execute(
        "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
        "retry_base, next_attempt_at, lease_until, body, last_attempt_at, created_at, "
        "updated_at, seq) VALUES ('wh_1', 'evt_1', ?, 2, 0, ?, ?, '{}'::BLOB, ?, ?, ?, 1)",
        [status, T0, lease, T0 - timedelta(minutes=1), T0, T0],
    )


def _state(con: Any) -> tuple[Any, ...]:
    queue = con.execute(
        "SELECT status, attempts, next_attempt_at, lease_until, last_status_code, "
        "last_error, last_attempt_at, updated_at FROM webhook_delivery_queue"
    ).fetchall()
    log = con.execute(
        "SELECT webhook_id, event_id, attempt, attempted_at, duration_ms, status_code, "
        "error, response_excerpt, outcome FROM webhook_deliveries"
    ).fetchall()
    return queue, log


@pytest.mark.parametrize(("case", "status", "lease", "outcome"), CASES, ids=[c[0] for c in CASES])
def test_one_outcome_is_recorded_as_the_list_form_records_it(
    connect: Callable[[str], Any],
    case: str,
    status: str,
    lease: datetime | None,
    outcome: Outcome,
) -> None:
    one, many = connect("one"), connect("many")
    for con in (one, many):
        _row(con, status, lease)
    batches._record_one(one, outcome, NOW)
    batches._record_many(many, [outcome], NOW)
    assert _state(one) == _state(many)


def test_a_batch_of_one_takes_the_point_statements(connect: Callable[[str], Any]) -> None:
    """record() sends a batch of one through _record_one: its UPDATE is record_one's."""
    con = connect("trace")
    _row(con, "inflight", LEASE)
    seen: list[str] = []

    class Tracing:
        def execute(self, sql: str, parameters: object = None) -> Any:
            seen.append(sql)
            return con.execute(sql, parameters)

    batches.record(Tracing(), [DELIVERED])
    assert query("record_one") in seen and query("record") not in seen
    assert _state(con)[0][0][0] == "delivered"


def _events(con: Any) -> list[Any]:
    return con.execute(
        "SELECT event_id, event_type, payload, body, occurred_at, ingested_at, tenant, "
        "traceparent FROM pipeline_events ORDER BY seq"
    ).fetchall()


@pytest.mark.parametrize("tenant", [None, "acme"])
def test_one_event_is_stored_as_the_list_form_stores_it(
    connect: Callable[[str], Any], tenant: str | None
) -> None:
    """A single new event goes in with ingest_one (a point INSERT), more with the list
    form: the same row either way, every column."""
    from webhookd.events import NewEvent

    event = NewEvent(
        "evt_1",
        "order.paid",
        '{"n":1}',
        T0,
        b'{"data":{"n":1}}',
        tenant,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    other = replace(event, event_id="evt_2")
    one, many, seen = connect("one"), connect("many"), []

    class Tracing:
        def execute(self, sql: str, parameters: object = None) -> Any:
            seen.append(sql)
            return one.execute(sql, parameters)

    batches.ingest(Tracing(), [[event]])
    batches.ingest(many, [[event, other]])
    assert query("ingest_one") in seen and query("ingest") not in seen
    (stored,) = _events(one)
    assert stored[:5] == _events(many)[0][:5] and stored[6:] == _events(many)[0][6:]
    assert stored[:5] == ("evt_1", "order.paid", '{"n":1}', b'{"data":{"n":1}}', T0)
    assert stored[6:] == (tenant, event.traceparent)
