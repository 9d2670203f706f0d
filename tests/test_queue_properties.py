"""The delivery queue under random interleavings of everything that touches it.

A Hypothesis state machine drives a real store, on every engine as the daemon opens it
(a DuckDB file through RemoteStore and its database process, a PostgreSQL schema through
its pool), through
ingest + scan, claims, outcomes, lease expiry, late outcomes (a worker whose lease ran
out reports after all), restarts (claims held in memory become void), release, webhook
deactivate / enable / delete, redrive and replay, and keeps a model of what every row
must be. After each step the database, read through the store's public API, is checked
against the model and against the queue's invariants:

* no (webhook, event) pair ever enqueued goes missing (nothing prunes here);
* `attempts` never decreases and equals the number of log rows of its pair, not counting
  the rows of late outcomes: a late outcome changes nothing in the queue, but its attempt
  was made, and the log keeps it;
* a delivered row stays delivered unless replayed;
* a row is `inflight` exactly when it has a lease, and exactly when a live claim holds it;
* no row of an inactive or deleted webhook is `pending`.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.conftest import CONFORMANCE_POLL, make_settings
from tests.pg import PgCluster, drop_schema, fresh_schema
from webhookd.events import NewEvent, parse_event
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import (
    Claim,
    DeliveryFilter,
    NotFound,
    Outcome,
    Owner,
    Store,
    WebhookPatch,
)
from webhookd.store.engines import make_store
from webhookd.store.records import utcnow

T = TypeVar("T")
Key = tuple[str, str]

TYPES = ("a", "b")
FILTERS: list[tuple[str, ...]] = [(), ("a",), ("b",), ("a", "b")]
SHORT_LEASE, LONG_LEASE = 30.0, 3600.0
LATER = timedelta(hours=1)
# kind of outcome -> (status the worker decided, HTTP status, due, deactivate)
KINDS: dict[str, tuple[Status, int, str | None, bool]] = {
    "delivered": (Status.DELIVERED, 204, None, False),
    "retry_now": (Status.PENDING, 500, "now", False),
    "retry_later": (Status.PENDING, 503, "later", False),
    "dead": (Status.DEAD, 500, None, False),
    "gone": (Status.PARKED, 410, None, True),
}
FINISHED = (Status.DELIVERED, Status.DEAD, Status.PARKED)
# (which held claim, by position; what its attempt did)
PICKS = st.lists(
    st.tuples(st.integers(0, 99), st.sampled_from(sorted(KINDS))), min_size=1, max_size=5
)


def make_event(event_id: str, event_type: str) -> NewEvent:
    return parse_event(
        {"id": event_id, "type": event_type, "data": {"id": event_id}},
        0,
        datetime.now().astimezone(),
    )


def make_outcome(claim: Claim, kind: str) -> Outcome:
    status, code, due, gone = KINDS[kind]
    now = utcnow()
    return Outcome(
        webhook_id=claim.webhook_id,
        event_id=claim.event_id,
        attempt=claim.attempt,
        status=status,
        next_attempt_at=None if due is None else now + (LATER if due == "later" else timedelta()),
        attempted_at=now,
        duration_ms=1.0,
        status_code=code,
        error=None if code < 300 else f"HTTP {code}",
        response_excerpt="",
        outcome=kind,
        deactivate_webhook=gone,
        claimed_until=claim.claimed_until,
    )


@dataclass
class Hook:
    types: tuple[str, ...]
    active: bool = True
    deleted: bool = False

    @property
    def live(self) -> bool:
        return self.active and not self.deleted

    def wants(self, event_type: str) -> bool:
        return not self.types or event_type in self.types


@dataclass
class Row:
    """What the model says a queue row must be."""

    status: Status = Status.PENDING
    attempts: int = 0
    base: int = 0  # attempts spent before the last enable / redrive / replay
    due: str | None = "now"  # "now", "later", or None when not pending
    code: int | None = None
    log: int = 0  # log rows of outcomes that applied
    late: list[int] = field(default_factory=list)  # attempt numbers of late outcomes' log rows


@dataclass
class Held:
    claim: Claim
    lease: float


@dataclass
class Seen:
    """What the last check read from the database, to compare the next one with."""

    attempts: dict[Key, int] = field(default_factory=dict)
    delivered: set[Key] = field(default_factory=set)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = Path(tempfile.mkdtemp(prefix="webhookd-queue-"))
        self.path = self.dir / "queue.duckdb"
        self.schema = fresh_schema()
        self.store = self.new_store()
        self.run(self.store.open())
        self.hooks: dict[str, Hook] = {}
        self.events: dict[str, str] = {}  # event id -> type, in ingest order
        self.rows: dict[Key, Row] = {}
        self.held: dict[Key, Held] = {}
        # Claims whose lease ran out while their worker still holds them: it may report yet.
        self.expired: list[Claim] = []
        self.replayed: set[Key] = set()
        self.seen = Seen()

    # Which engine the machine drives: set by the test before it runs the machine.
    engine = "duckdb"
    pg: PgCluster | None = None

    def new_store(self) -> Store:
        """A store on this machine's database (the same file or schema at every restart),
        as the daemon opens it: DuckDB through RemoteStore and its database process,
        PostgreSQL through its pool."""
        if self.engine == "duckdb":
            database = {"path": str(self.path), "checkpoint_interval": "1h"}
        else:
            assert self.pg is not None
            database = {"url": self.pg.url, "schema": self.schema}
        return make_store(make_settings(self.dir, database=database, scanner=CONFORMANCE_POLL))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
            if self.pg is not None:
                self.run(drop_schema(self.pg.url, self.schema))
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- model helpers ----------------------------------------------------------------

    def held_keys(self) -> list[Key]:
        """The claims held, in an order that does not depend on random webhook ids."""
        order = {wid: n for n, wid in enumerate(self.hooks)}
        return sorted(self.held, key=lambda k: (order[k[0]], int(k[1][1:])))

    def hook_at(self, index: int, *, existing: bool = False) -> str:
        ids = [w for w, h in self.hooks.items() if not (existing and h.deleted)]
        return ids[index % len(ids)]

    def park_pending_of_inactive(self) -> None:
        """The store parks pending rows of inactive webhooks in the same transaction."""
        for (wid, _), row in self.rows.items():
            if row.status is Status.PENDING and not self.hooks[wid].live:
                row.status, row.due = Status.PARKED, None

    def set_due(self, keys: list[Key]) -> int:
        """Enable / redrive / replay: due now, a fresh budget; rows of inactive hooks re-park."""
        for key in keys:
            row = self.rows[key]
            row.status, row.due, row.base = Status.PENDING, "now", row.attempts
        self.park_pending_of_inactive()
        return sum(self.hooks[k[0]].live for k in keys)

    def back_to_pending(self, keys: list[Key]) -> None:
        """Lease expiry, restart, release: the claim is void, the row due now."""
        for key in keys:
            row = self.rows[key]
            assert row.status is Status.INFLIGHT
            row.status, row.due = Status.PENDING, "now"
            del self.held[key]
        self.park_pending_of_inactive()

    # --- rules ------------------------------------------------------------------------

    @initialize(
        filters=st.lists(st.sampled_from(FILTERS), min_size=1, max_size=3),
        types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=6),
    )
    def a_populated_queue(self, filters: list[tuple[str, ...]], types: list[str]) -> None:
        """Start with webhooks and events, so that every step has rows to work on."""
        for f in filters:
            self.create_webhook(f)
        self.ingest_and_scan(types, repost=False, batch=4)

    @precondition(lambda self: len(self.hooks) < 5)
    @rule(types=st.sampled_from(FILTERS))
    def create_webhook(self, types: tuple[str, ...]) -> None:
        url = f"http://127.0.0.1:9/{len(self.hooks)}"
        created = self.run(self.store.create_webhook(url, list(types), new_secret(), ""))
        self.hooks[created["webhook_id"]] = Hook(types)

    @rule(
        types=st.lists(st.sampled_from(TYPES), min_size=1, max_size=4),
        repost=st.booleans(),
        batch=st.integers(1, 5),
    )
    def ingest_and_scan(self, types: list[str], repost: bool, batch: int) -> None:
        fresh = [(f"e{len(self.events) + i}", t) for i, t in enumerate(types)]
        again = list(self.events.items())[:1] if repost else []
        result = self.run(self.store.ingest([make_event(e, t) for e, t in fresh + again]))
        assert result.inserted == len(fresh)
        enqueued = 0
        while True:
            scanned = self.run(self.store.scan(batch))
            enqueued += scanned.enqueued
            if scanned.events == 0:
                break
        expected = 0
        for event_id, event_type in fresh:
            self.events[event_id] = event_type
            for wid, hook in self.hooks.items():
                if hook.live and hook.wants(event_type):
                    self.rows[(wid, event_id)] = Row()
                    expected += 1
        assert enqueued == expected

    @rule(
        limit=st.integers(1, 10),
        cap=st.integers(1, 3),
        lease=st.sampled_from([SHORT_LEASE, LONG_LEASE]),
    )
    def claim(self, limit: int, cap: int, lease: float) -> None:
        due: dict[str, int] = {}
        busy: dict[str, int] = {}
        for (wid, _), row in self.rows.items():
            if row.status is Status.INFLIGHT:
                busy[wid] = busy.get(wid, 0) + 1
            elif row.status is Status.PENDING and row.due == "now" and self.hooks[wid].live:
                due[wid] = due.get(wid, 0) + 1
        claims = self.run(self.store.claim(limit, cap, lease))
        keys = [(c.webhook_id, c.event_id) for c in claims]
        assert len(keys) == len(set(keys)) <= limit
        taken: dict[str, int] = {}
        for claim, key in zip(claims, keys, strict=True):
            row = self.rows[key]
            assert row.status is Status.PENDING and row.due == "now", (key, row)
            assert self.hooks[key[0]].live
            assert (claim.attempt, claim.budget_attempt) == (
                row.attempts + 1,
                row.attempts + 1 - row.base,
            )
            assert len(claim.secrets) == 1
            taken[key[0]] = taken.get(key[0], 0) + 1
        for wid, n in taken.items():
            assert n <= cap - busy.get(wid, 0), (wid, n, cap, busy)
        # Progress: if any row may be claimed, a claim takes at least one. (Not that it takes
        # all it may: the store ranks only a window of the oldest due rows, by design.)
        claimable = sum(min(n, max(0, cap - busy.get(wid, 0))) for wid, n in due.items())
        assert (claimable == 0) == (not claims), (claimable, taken)
        for claim, key in zip(claims, keys, strict=True):
            self.rows[key].status, self.rows[key].due = Status.INFLIGHT, None
            self.held[key] = Held(claim, lease)

    @rule(picks=PICKS)
    def record(self, picks: list[tuple[int, str]]) -> None:
        """Outcomes for some of the claims held (picked by position: the draw never depends
        on which rows the store chose, so Hypothesis can replay and shrink)."""
        keys = self.held_keys()
        if not keys:
            return
        chosen: dict[Key, str] = {}
        for index, kind in picks:
            chosen.setdefault(keys[index % len(keys)], kind)
        outcomes = [make_outcome(self.held[k].claim, kind) for k, kind in chosen.items()]

        async def all_at_once() -> None:  # concurrent, as workers do: one group commit or more
            await asyncio.gather(*(self.store.record(o) for o in outcomes))

        self.run(all_at_once())
        for (key, kind), outcome in zip(chosen.items(), outcomes, strict=True):
            status, code, due, gone = KINDS[kind]
            row = self.rows[key]
            row.status, row.due, row.code = status, due, code
            row.attempts, row.log = outcome.attempt, row.log + 1
            del self.held[key]
            if gone:
                self.hooks[key[0]].active = False
        self.park_pending_of_inactive()

    @rule(
        limit=st.integers(1, 10),
        cap=st.integers(1, 3),
        lease=st.sampled_from([SHORT_LEASE, LONG_LEASE]),
        picks=PICKS,
    )
    def claim_and_record(
        self, limit: int, cap: int, lease: float, picks: list[tuple[int, str]]
    ) -> None:
        """What a worker pool does: claim, then hand back some outcomes."""
        self.claim(limit, cap, lease)
        self.record(picks)

    @rule()
    def expire_leases(self) -> None:
        """The lease rescuer, run as if a minute had passed: short leases run out."""
        rescued = self.run(self.store.rescue_expired(utcnow() + timedelta(minutes=1)))
        expired = [k for k, h in self.held.items() if h.lease == SHORT_LEASE]
        assert rescued == len(expired)
        # Their workers are still at it, and will report late (see late_outcome).
        self.expired.extend(self.held[k].claim for k in expired)
        self.back_to_pending(expired)

    @precondition(lambda self: self.expired)
    @rule(index=st.integers(0, 99), kind=st.sampled_from(sorted(KINDS)))
    def late_outcome(self, index: int, kind: str) -> None:
        """A worker whose lease ran out reports after all: by now its row is pending, taken
        by a newer claim, or finished. The outcome must change nothing in the queue. Its
        log row is written (the attempt was made). A 410 still deactivates the webhook:
        the endpoint asked to stop, whichever claim heard it."""
        claim = self.expired.pop(index % len(self.expired))

        async def report() -> None:  # record() queues on the running loop
            await self.store.record(make_outcome(claim, kind))

        self.run(report())
        key = (claim.webhook_id, claim.event_id)
        self.rows[key].late.append(claim.attempt)
        if KINDS[kind][3]:
            self.hooks[key[0]].active = False
            self.park_pending_of_inactive()

    @rule(
        limit=st.integers(1, 10),
        cap=st.integers(1, 3),
        picks=PICKS,
        kind=st.sampled_from(sorted(KINDS)),
    )
    def expire_claim_again_and_report_late(
        self, limit: int, cap: int, picks: list[tuple[int, str]], kind: str
    ) -> None:
        """The case the lease fence exists for, in one step: claims outlive their leases,
        their rows are claimed again, and one of the first workers reports late while its
        row is inflight under the newer claim."""
        self.claim(limit, cap, SHORT_LEASE)
        self.expire_leases()
        self.claim(limit, cap, LONG_LEASE)
        if self.expired:
            superseded = [c for c in self.expired if (c.webhook_id, c.event_id) in self.held]
            index = picks[0][0]
            if superseded:
                index = self.expired.index(superseded[index % len(superseded)])
            self.late_outcome(index, kind)

    @rule()
    def restart(self) -> None:
        """The process dies and a new one opens the database: every claim is void. DuckDB
        rescues them at start-up (the file lock proves their owner gone); on PostgreSQL the
        next rescue finds their daemon gone (it left the daemons table)."""
        self.run(self.store.close())
        self.store = self.new_store()
        self.run(self.store.open())
        assert self.store.migrations_applied == []
        rescued = self.run(self.store.rescue_orphans()) if isinstance(self.store, Owner) else 0
        rescued += self.run(self.store.rescue_expired(utcnow()))
        assert rescued == len(self.held)
        self.back_to_pending(list(self.held))
        self.expired.clear()  # their workers died with the process: no late outcomes

    @rule(picks=st.lists(st.integers(0, 99), max_size=4))
    def release(self, picks: list[int]) -> None:
        held = self.held_keys()
        keys = sorted({held[i % len(held)] for i in picks}) if held else []
        assert self.run(self.store.release(keys)) == len(keys)
        self.back_to_pending(keys)

    @precondition(lambda self: self.hooks)
    @rule(index=st.integers(0, 99), active=st.booleans())
    def set_active(self, index: int, active: bool) -> None:
        wid = self.hook_at(index)
        hook = self.hooks[wid]
        if hook.deleted:
            with pytest.raises(NotFound):
                self.run(self.store.update_webhook(wid, WebhookPatch(active=active)))
            return
        updated = self.run(self.store.update_webhook(wid, WebhookPatch(active=active)))
        assert updated["active"] is active
        was_active, hook.active = hook.active, active
        if active and not was_active:
            self.set_due(
                [k for k, r in self.rows.items() if k[0] == wid and r.status is Status.PARKED]
            )
        self.park_pending_of_inactive()

    @precondition(lambda self: any(not h.deleted for h in self.hooks.values()))
    @rule(index=st.integers(0, 99))
    def delete_webhook(self, index: int) -> None:
        wid = self.hook_at(index, existing=True)
        self.run(self.store.delete_webhook(wid))
        self.hooks[wid].deleted = True
        self.park_pending_of_inactive()

    @precondition(lambda self: self.hooks)
    @rule(
        status=st.sampled_from([Status.DEAD, Status.PARKED]),
        index=st.none() | st.integers(0, 99),
    )
    def redrive(self, status: Status, index: int | None) -> None:
        wid = None if index is None else self.hook_at(index)
        count = self.run(self.store.redrive(status, wid, None))
        matched = [
            k for k, r in self.rows.items() if r.status is status and (wid is None or k[0] == wid)
        ]
        assert count == self.set_due(matched)

    @precondition(lambda self: self.events and self.hooks)
    @rule(event=st.integers(0, 99), index=st.none() | st.integers(0, 99))
    def replay(self, event: int, index: int | None) -> None:
        event_id = list(self.events)[event % len(self.events)]
        event_type = self.events[event_id]
        wid = None if index is None else self.hook_at(index)
        if wid is not None and self.hooks[wid].deleted:
            with pytest.raises(NotFound):
                self.run(self.store.replay(event_id, wid))
            return
        count = self.run(self.store.replay(event_id, wid))
        targets = [wid] if wid is not None else [w for w, h in self.hooks.items() if not h.deleted]
        again = [
            k
            for k, r in self.rows.items()
            if k[1] == event_id and r.status in FINISHED and (wid is None or k[0] == wid)
        ]
        inserted = [
            (w, event_id)
            for w in targets
            if (w, event_id) not in self.rows
            and (wid is not None or (self.hooks[w].live and self.hooks[w].wants(event_type)))
        ]
        for key in inserted:
            self.rows[key] = Row()
        expected = self.set_due(again + inserted)
        assert count == expected, (count, expected)
        self.replayed.update(again + inserted)

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def queue_matches_the_model(self) -> None:
        page = self.run(self.store.list_deliveries(DeliveryFilter(), 1000, None))
        assert page.next is None
        db = {(i["webhook_id"], i["event_id"]): i for i in page.items}
        active = {
            h["webhook_id"]: h["active"]
            for h in self.run(self.store.list_webhooks(1000, None)).items
        }
        now = utcnow()

        # nothing ever enqueued goes missing, nothing appears from nowhere
        assert set(db) == set(self.rows), set(self.rows) ^ set(db)
        for key, item in db.items():
            row = self.rows[key]
            status = Status(item["status"])
            # a lease exactly on inflight rows, and those are exactly the live claims
            assert (status is Status.INFLIGHT) == (item["lease_until"] is not None), item
            assert (status is Status.INFLIGHT) == (key in self.held), item
            # no pending row of an inactive or deleted webhook
            if status is Status.PENDING:
                assert active.get(key[0]) is True, item
                due = datetime.fromisoformat(item["next_attempt_at"].rstrip("Z"))
                assert (due > now + LATER / 2) == (row.due == "later"), (item, row)
            # attempts never decrease
            assert item["attempts"] >= self.seen.attempts.get(key, 0), item
            # delivered stays delivered unless replayed
            if key in self.seen.delivered and key not in self.replayed:
                assert status is Status.DELIVERED, item
            # the model
            assert (status, item["attempts"], item["last_status_code"]) == (
                row.status,
                row.attempts,
                row.code,
            ), (key, item, row)
        self.seen.attempts = {k: i["attempts"] for k, i in db.items()}
        self.seen.delivered = {k for k, i in db.items() if i["status"] == Status.DELIVERED}
        self.replayed.clear()

    @invariant()
    def attempts_equal_the_log(self) -> None:
        async def logs() -> dict[Key, list[dict[str, Any]]]:
            return {
                k: await self.store.list_attempts(*k)
                for k, row in self.rows.items()
                if row.log or row.late
            }

        for key, log in self.run(logs()).items():
            row = self.rows[key]
            assert row.log == row.attempts, (key, row)
            assert len(log) == row.log + len(row.late), (key, log, row)
            expected = sorted([*range(1, row.log + 1), *row.late])
            assert sorted(a["attempt"] for a in log) == expected, (key, log, row)


MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture
def machine_engine(engine: str, request: pytest.FixtureRequest) -> str:
    QueueMachine.engine = engine
    QueueMachine.pg = request.getfixturevalue("pg") if engine == "postgresql" else None
    return engine


def test_queue_invariants_hold_under_random_interleavings(machine_engine: str) -> None:
    # Garbage left by earlier tests may log a traceback from a finalizer, and Python
    # 3.11's traceback formatting calls ast.parse: nested inside Hypothesis's own parse of
    # this module (for its database key), CPython 3.11.7 fails with "SystemError: AST
    # constructor recursion depth mismatch". Run those finalizers first.
    gc.collect()
    run_state_machine_as_test(QueueMachine, settings=MACHINE_SETTINGS)


# --- found while writing the machine ----------------------------------------------------


async def test_a_late_outcome_does_not_overwrite_a_newer_claim(store: Store) -> None:
    created = await store.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "")
    wid = created["webhook_id"]
    await store.ingest([make_event("e1", "a")])
    await store.scan(10)
    (first,) = await store.claim(10, 8, SHORT_LEASE)
    assert await store.rescue_expired(utcnow() + timedelta(minutes=1)) == 1
    (second,) = await store.claim(10, 8, SHORT_LEASE)
    # The first worker comes back late: its attempt failed, retry now.
    await store.record(make_outcome(first, "retry_now"))
    (row,) = (await store.list_deliveries(DeliveryFilter(), 10, None)).items
    still_held = row["status"] == Status.INFLIGHT and row["lease_until"] is not None
    # ... so the row must not be claimable again while the second attempt is in flight,
    assert still_held and await store.claim(10, 8, SHORT_LEASE) == [], row
    # and the second worker's success must be what the row ends with.
    await store.record(make_outcome(second, "delivered"))
    (row,) = (await store.list_deliveries(DeliveryFilter(), 10, None)).items
    assert (row["status"], row["last_status_code"]) == ("delivered", 204), row
    assert wid == row["webhook_id"]
