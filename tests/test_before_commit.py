"""A DuckDB scan that enqueues its rows claimed (batches.enqueue_claimed) hands its claims
to the caller before its transaction commits, so that their attempts start while DuckDB
syncs the commit. That is safe because the rows exist only in that transaction: if it
never commits, nothing durable says they were claimed, the scanner's cursor has not moved,
and the next scan enqueues the events again (a duplicate attempt, never a lost one). On a
real DuckDB file, through the main writer (writer.Writer) and its remembering cursor."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.kit.duckdb_cursor import Counting, counting_cursor, in_transaction
from webhookd.events import parse_event
from webhookd.store.base import ClaimRequest, ScanResult, WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.duckdb.writer import Writer
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ASK = ClaimRequest(limit=64, per_webhook=8, lease=600.0, early=True)
WAIT = 10.0  # seconds: a deadline, not a pace


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Counting]:
    with counting_cursor(tmp_path) as cur:
        yield cur


def _setup(con: Counting, n_events: int = 1) -> str:
    """A plain webhook for type t, and `n_events` events of that type, committed."""
    (hook,) = in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", ["t"], SECRET, "", WebhookLimits(), None)],
    )
    now = utcnow()
    events = [
        parse_event({"id": f"e{i}", "type": "t", "data": {}}, i, now) for i in range(n_events)
    ]
    in_transaction(con, batches.ingest, [events])
    return str(hook.webhook_id)


def _rows(con: Counting) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in con.execute(
            "SELECT webhook_id, event_id, status FROM webhook_delivery_queue ORDER BY event_id"
        ).fetchall()
    ]


def _cursor_seq(con: Counting) -> int:
    return int(con.execute("SELECT seq FROM scanner_cursor").fetchone()[0])


class Gate:
    """A batch function that runs after the scan in the same transaction and holds it open
    until told, or fails when told to: what the scan's caller sees meanwhile is what it
    sees before the commit."""

    def __init__(self, *, fail: bool = False) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail
        self.calls = 0

    def __call__(self, con: Any, payloads: Sequence[Any]) -> list[str]:
        self.calls += 1
        self.entered.set()
        if not self.release.wait(WAIT):
            raise TimeoutError("the test never released the transaction")
        if self.fail:
            raise RuntimeError("this transaction fails after the scan")
        return ["gate"] * len(payloads)


async def _scan_and_gate(
    con: Counting, gate: Gate, *, counted: list[int] | None = None
) -> tuple[asyncio.Future[Any], asyncio.Future[Any], Writer]:
    """A scan (with a claim request) and the gate, submitted before the writer starts, so
    that both run in one transaction: the scan first (priority 2), then the gate (3)."""

    def scan(c: Any, payloads: Sequence[Any]) -> list[ScanResult]:
        if counted is not None:
            counted.append(len(payloads))
        return batches.scan(c, payloads)

    writer = Writer(con, name="test-writer")
    scanned = writer.submit(scan, (500, ASK, False), priority=2)
    gated = writer.submit(gate, None, priority=3)
    writer.start()
    return scanned, gated, writer


async def test_a_scans_claims_reach_their_caller_before_its_transaction_commits(
    con: Counting,
) -> None:
    hook = _setup(con)
    gate = Gate()
    scanned, gated, writer = await _scan_and_gate(con, gate)
    try:
        result = await asyncio.wait_for(asyncio.shield(scanned), WAIT)
        # The gate still holds the transaction open: nothing is committed yet.
        assert gate.entered.is_set() and not gated.done()
        assert [(c.webhook_id, c.event_id) for c in result.claims] == [(hook, "e0")]
    finally:
        gate.release.set()
        assert await asyncio.wait_for(gated, WAIT) == "gate"
        writer.stop(WAIT)
    # Once committed, the row is inflight under the lease the claim carries.
    assert _rows(con) == [(hook, "e0", "inflight")]
    lease = con.execute("SELECT lease_until FROM webhook_delivery_queue").fetchone()[0]
    assert lease == result.claims[0].claimed_until


async def test_claims_told_before_a_commit_that_fails_leave_the_events_to_the_next_scan(
    con: Counting,
) -> None:
    hook = _setup(con, n_events=2)
    before = _cursor_seq(con)
    gate = Gate(fail=True)
    counted: list[int] = []
    scanned, gated, writer = await _scan_and_gate(con, gate, counted=counted)
    try:
        result = await asyncio.wait_for(asyncio.shield(scanned), WAIT)
        assert len(result.claims) == 2
    finally:
        gate.release.set()
        with pytest.raises(RuntimeError, match="fails after the scan"):
            await asyncio.wait_for(gated, WAIT)
        writer.stop(WAIT)
    # The transaction rolled back: no row, the cursor where it was, and the scan that was
    # told early is not run again alone (its rows would wait inflight for nobody).
    assert _rows(con) == []
    assert _cursor_seq(con) == before
    assert counted == [1]
    # The next scan enqueues both events again, and they are delivered after all.
    (again,) = in_transaction(con, batches.scan, [(500, ASK, False)])
    assert sorted(c.event_id for c in again.claims) == ["e0", "e1"]
    assert _rows(con) == [(hook, "e0", "inflight"), (hook, "e1", "inflight")]


async def test_a_scan_that_claims_from_the_queue_is_told_after_the_commit(
    con: Counting,
) -> None:
    # More events than a scan enqueues claimed: scanned pending, then claimed, which may
    # take rows older transactions left pending. Its caller hears after the commit.
    _setup(con, n_events=batches.FEW_EVENTS + 1)
    gate = Gate()
    scanned, gated, writer = await _scan_and_gate(con, gate)
    try:
        assert await asyncio.to_thread(gate.entered.wait, WAIT)
        # Give a result handed out early every chance to arrive: a few turns of the loop.
        for _ in range(20):
            await asyncio.sleep(0)
        assert not scanned.done()
    finally:
        gate.release.set()
        result = await asyncio.wait_for(scanned, WAIT)
        await asyncio.wait_for(gated, WAIT)
        writer.stop(WAIT)
    assert len(result.claims) == ASK.per_webhook  # the webhook's cap
