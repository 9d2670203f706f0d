"""The DuckDB main writer's cursor keeps two facts of the queue between statements
(common.QUEUE_FACTS): the time before which no row is due, and the rows each webhook
holds inflight. Claims, outcomes and the scan that enqueues rows claimed keep them up to
date; every other write makes the cursor forget them. A seeded walk of every operation
that changes the queue, on a real DuckDB file, checks after each step that what the
cursor still knows is what the queue says."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.kit.duckdb_cursor import counting_cursor, delivered, in_transaction
from webhookd.events import parse_event
from webhookd.states import Status
from webhookd.store.base import Claim, ClaimRequest, Outcome, WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.duckdb.common import DUE_AFTER, HELD, Cursor, known
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OPS = ["emit", "scan", "scan", "claim", "claim", "claim", "record", "record", "release", "rescue"]


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Cursor]:
    with counting_cursor(tmp_path) as cur:
        yield cur


def _check(con: Cursor) -> tuple[bool, bool]:
    """What the cursor knows agrees with the queue; which facts it knows."""
    held = known(con, HELD)
    after = known(con, DUE_AFTER)
    if held is not None:
        truth = dict(
            con.execute(
                "SELECT webhook_id, count(*) FROM webhook_delivery_queue"
                " WHERE status = 'inflight' GROUP BY webhook_id"
            ).fetchall()
        )
        assert {w: n for w, n in held.items() if n} == truth
    if after is not None:
        (first,) = con.execute(
            "SELECT min(next_attempt_at) FROM webhook_delivery_queue WHERE status = 'pending'"
        ).fetchone()
        assert first is None or first >= after
    return held is not None, after is not None


def _outcome(claim: Claim, kind: str) -> Outcome:
    if kind == "delivered":
        return delivered(claim)
    if kind == "stale":
        assert claim.claimed_until is not None
        return delivered(claim, claimed_until=claim.claimed_until - timedelta(seconds=1))
    later = timedelta(0) if kind == "retry now" else timedelta(hours=1)
    return delivered(
        claim,
        status=Status.PENDING,
        next_attempt_at=utcnow() + later,
        status_code=503,
        error="HTTP 503",
        outcome="retry",
    )


@pytest.mark.parametrize("seed", range(6))
def test_what_the_cursor_knows_of_the_queue_is_what_the_queue_says(con: Cursor, seed: int) -> None:
    rng = random.Random(seed)
    for types in (["t"], ["u"], []):
        in_transaction(
            con,
            admin.create_webhook,
            [("https://example.com/h", types, SECRET, "", WebhookLimits(), None)],
        )
    claims: list[Claim] = []
    knew = {"held": 0, "due_after": 0}
    for step in range(150):
        op = rng.choice(OPS)
        if op == "emit":
            now = utcnow()
            events = [
                parse_event({"id": f"e{step}-{n}", "type": rng.choice("tuv"), "data": {}}, n, now)
                for n in range(rng.randint(1, 3))
            ]
            in_transaction(con, batches.ingest, [events])
        elif op == "scan":
            request = ClaimRequest(rng.randint(1, 8), rng.randint(1, 3), 600.0)
            (result,) = in_transaction(con, batches.scan, [(500, request, rng.random() < 0.3)])
            claims += result.claims
        elif op == "claim":
            ask = (rng.randint(1, 8), rng.randint(1, 3), 600.0, {})
            (taken,) = in_transaction(con, batches.claim, [ask])
            claims += taken
        elif op == "record" and claims:
            picked = [claims.pop(rng.randrange(len(claims))) for _ in range(min(len(claims), 2))]
            kinds = ["delivered", "retry now", "retry later", "stale"]
            outcomes = [_outcome(c, rng.choice(kinds)) for c in picked]
            in_transaction(con, batches.record, outcomes)
        elif op == "release" and claims:
            gone = claims.pop(rng.randrange(len(claims)))
            in_transaction(con, batches.release, [[(gone.webhook_id, gone.event_id)]])
        elif op == "rescue" and rng.random() < 0.3:
            in_transaction(con, batches.rescue, [utcnow() + timedelta(hours=1)])
            claims.clear()
        held, after = _check(con)
        knew["held"] += held
        knew["due_after"] += after
    # The walk must have exercised both facts while they were known, not only checked
    # a cursor that had forgotten them.
    assert knew["held"] > 20 and knew["due_after"] > 0, knew
