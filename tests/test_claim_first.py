"""A DuckDB claim after one that found nothing asks first whether any row is due
(claim_first) and stops there if none is: at low rates most claims find nothing, and their
other statements cost DuckDB more than the question. On a real DuckDB file, through the
main writer's remembering cursor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.kit.duckdb_cursor import Counting, counting_cursor, delivered, in_transaction
from webhookd.events import parse_event
from webhookd.states import Status
from webhookd.store.base import Claim, ClaimRequest, WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ASK = (64, 8, 600.0, {})
HOOK = ("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Counting]:
    with counting_cursor(tmp_path) as cur:
        yield cur


def _claim(con: Counting) -> list[Any]:
    con.ran.clear()
    ((claims),) = in_transaction(con, batches.claim, [ASK])
    return list(claims)


def test_an_empty_claim_after_an_empty_claim_asks_only_whether_any_row_is_due(
    con: Counting,
) -> None:
    assert _claim(con) == []
    assert "claim_held" in con.ran  # nothing known yet: the whole claim
    assert _claim(con) == []
    assert "claim_first" in con.ran
    assert "claim_held" not in con.ran and "claim" not in con.ran


def test_a_row_due_after_an_empty_claim_is_claimed(con: Counting) -> None:
    (hook,) = in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)],
    )
    assert _claim(con) == []
    event = parse_event({"id": "e1", "type": "t", "data": {}}, 0, utcnow())
    in_transaction(con, batches.ingest, [[event]])
    (scanned,) = in_transaction(con, batches.scan, [(500, None, False)])
    assert scanned.enqueued == 1
    claims = _claim(con)
    assert [(c.webhook_id, c.event_id) for c in claims] == [(hook.webhook_id, "e1")]
    assert "claim_first" in con.ran  # asked first, found the row, went on


def test_a_row_that_falls_due_later_is_claimed_after_empty_claims(con: Counting) -> None:
    """A retry whose time comes: claim_first is compared with the claim's own now."""
    (hook,) = in_transaction(
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


def _claimed_row(con: Counting) -> Claim:
    """One row of a new event, claimed by the scan that enqueued it."""
    in_transaction(con, admin.create_webhook, [HOOK])
    event = parse_event({"id": "e1", "type": "t", "data": {}}, 0, utcnow())
    in_transaction(con, batches.ingest, [[event]])
    (scanned,) = in_transaction(con, batches.scan, [(500, ClaimRequest(*ASK), False)])
    (claim,) = scanned.claims
    return claim


def test_an_outcome_says_no_row_is_due_while_none_is_and_asks_the_queue_nothing(
    con: Counting,
) -> None:
    """The scan that claimed the row found when the next row falls due (never); an
    outcome keeps that, so it tells the pool no claim is worth waking (Store.record), and
    the claims after it run no statement."""
    claim = _claimed_row(con)
    con.ran.clear()
    (due,) = in_transaction(con, batches.record, [delivered(claim)])
    assert due is False
    assert "claim_first" not in con.ran
    assert _claim(con) == [] and con.ran == ["BEGIN TRANSACTION", "COMMIT"]


def test_a_retry_due_now_is_due_and_one_due_later_is_claimed_when_its_time_comes(
    con: Counting,
) -> None:
    claim = _claimed_row(con)
    soon = utcnow() + timedelta(milliseconds=300)
    retry = delivered(
        claim,
        status=Status.PENDING,
        next_attempt_at=soon,
        status_code=503,
        error="HTTP 503",
        outcome="retry",
    )
    (due,) = in_transaction(con, batches.record, [retry])
    assert due is False  # not yet
    assert _claim(con) == [] and con.ran == ["BEGIN TRANSACTION", "COMMIT"]
    deadline = time.monotonic() + 10
    claims: list[Any] = []
    while not claims and time.monotonic() < deadline:
        time.sleep(0.01)
        claims = _claim(con)
    assert [(c.event_id, c.attempt) for c in claims] == [("e1", 2)]
    assert utcnow() >= soon
    # A retry due at once is said to be due.
    again = replace(
        retry, attempt=2, next_attempt_at=utcnow(), claimed_until=claims[0].claimed_until
    )
    assert in_transaction(con, batches.record, [again]) == [True]


def test_any_other_write_to_the_queue_makes_the_claim_ask_again(con: Counting) -> None:
    claim = _claimed_row(con)
    in_transaction(con, batches.record, [delivered(claim)])
    assert _claim(con) == [] and "claim_first" not in con.ran
    now = utcnow()
    con.execute(
        "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
        "retry_base, next_attempt_at, body, created_at, updated_at, seq) "
        "VALUES (?, 'e2', 'pending', 0, 0, ?, '{}'::BLOB, ?, ?, 2)",
        [claim.webhook_id, now, now, now],
    )
    assert [c.event_id for c in _claim(con)] == ["e2"]
    assert "claim_first" in con.ran


def test_a_claim_carries_its_rows_seq_and_its_outcome_finds_the_row_by_it(
    con: Counting,
) -> None:
    """DuckDB finds an outcome's row by the seq its claim read (Claim.seq), which never
    changes: a seq that is not the row's applies nothing; the row's own applies the
    outcome."""
    claim = _claimed_row(con)
    (seq,) = con.execute(
        "SELECT seq FROM webhook_delivery_queue WHERE event_id = ?", [claim.event_id]
    ).fetchone()
    assert claim.seq == seq
    in_transaction(con, batches.record, [delivered(claim, seq=seq + 1)])
    assert _status(con, claim.event_id) == "inflight"
    in_transaction(con, batches.record, [delivered(claim)])
    assert _status(con, claim.event_id) == "delivered"


def test_a_batch_of_outcomes_finds_its_rows_within_their_seqs(con: Counting) -> None:
    in_transaction(con, admin.create_webhook, [HOOK])
    now = utcnow()
    events = [parse_event({"id": f"e{n}", "type": "t", "data": {}}, n, now) for n in range(3)]
    in_transaction(con, batches.ingest, [events])
    (scanned,) = in_transaction(con, batches.scan, [(500, ClaimRequest(*ASK), False)])
    first, second, third = sorted(scanned.claims, key=lambda c: c.event_id)
    assert first.seq is not None and third.seq is not None
    # The batch's range is its outcomes' seqs: a row outside it is not touched.
    wrong = delivered(second, seq=third.seq)
    in_transaction(con, batches.record, [wrong, delivered(third)])
    assert [_status(con, c.event_id) for c in (second, third)] == ["inflight", "delivered"]
    in_transaction(con, batches.record, [delivered(first), delivered(second)])
    assert {_status(con, c.event_id) for c in (first, second)} == {"delivered"}


def _status(con: Counting, event_id: str) -> str:
    (status,) = con.execute(
        "SELECT status FROM webhook_delivery_queue WHERE event_id = ?", [event_id]
    ).fetchone()
    return str(status)
