"""What the DuckDB engine's modules share: the cursor every statement runs through
(full-disk errors, the memo of the webhooks table), and the parking of rows whose
webhook is inactive or gone."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from webhookd import network
from webhookd.network import DeliveryOptions
from webhookd.store.duckdb.disk import Disk
from webhookd.store.duckdb.fresh import FreshEvents
from webhookd.store.duckdb.queries import query

T = TypeVar("T")

# A statement that changes the webhooks table (see Cursor.memo).
_WRITES_WEBHOOKS = re.compile(r"\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+webhooks\b", re.I)
# One that changes the queue (see QUEUE_FACTS).
_WRITES_QUEUE = re.compile(
    r"\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+webhook_delivery_queue\b", re.I
)
# What the main writer's cursor knows of the queue, kept by the statements that keep it
# true: the time before which no row is due (batches.due_after), and the rows each webhook
# holds inflight (batches._held). An outcome (record), a claim (claim_take) and rows a scan
# enqueues claimed change both only as the caller then notes, which it does; any other
# statement that writes the queue makes the cursor forget both.
DUE_AFTER = "due_after"
HELD = "held"
QUEUE_FACTS = (DUE_AFTER, HELD)
_KEEP_QUEUE_FACTS = (
    "record",
    "record_one",
    "claim_take",
    "enqueue_claimed",
    "enqueue_claimed_one",
)


@functools.cache
def _keeps_queue_facts() -> frozenset[str]:
    return frozenset(query(name) for name in _KEEP_QUEUE_FACTS)


class Cursor:
    """A cursor of the store's connection, through which every statement runs: DuckDB's
    words for a full disk become StorageFull, and while the database is invalidated every
    statement fails at once, without DuckDB, until the store has reopened it (attach).

    The main writer's cursor remembers what it read of the small webhooks table (`memo`,
    see remembered): which webhooks are fifo, asked after every batch of outcomes and
    every scan, the paced ones, and the URL and secrets of the active ones a claim hands
    out or a retry asks about (active_hooks). DuckDB plans and runs
    each of those SELECTs in 1-2 ms, a tenth of the writer's time under load. Every
    statement that writes the table runs on this cursor and makes it forget all of it,
    as does a ROLLBACK (the transaction may have read its own uncommitted changes). It
    also keeps facts of the queue (QUEUE_FACTS), forgotten as they say."""

    __slots__ = ("_cur", "_disk", "_mark", "early", "fresh", "memo", "notes", "remembers")

    def __init__(
        self, cur: duckdb.DuckDBPyConnection, disk: Disk, *, remembers: bool = False
    ) -> None:
        self._cur = cur
        self._disk = disk
        self.remembers = remembers
        self.memo: dict[str, Any] = {}
        # What batch functions left for after their transaction commits (note): what a
        # rolled-back transaction left is dropped with it.
        self.notes: list[Any] = []
        self._mark = 0
        # Results of this transaction's batch functions that their callers may have before
        # it commits (before_commit), by identity; emptied by every BEGIN.
        self.early: list[Any] = []
        # The main writer's: the events the ingest writer committed (fresh.py).
        self.fresh: FreshEvents | None = None

    def attach(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur
        self.memo.clear()
        self.notes = []
        if self.fresh is not None:
            self.fresh.clear()

    def take_notes(self) -> list[Any]:
        """What committed transactions left (note), once."""
        notes, self.notes = self.notes, []
        self._mark = 0
        return notes

    def execute(self, query: str, parameters: object = None) -> duckdb.DuckDBPyConnection:
        if query == "BEGIN TRANSACTION":
            self._mark = len(self.notes)
            self.early = []
        elif query == "ROLLBACK":
            del self.notes[self._mark :]
        if self.memo:
            if query == "ROLLBACK" or _WRITES_WEBHOOKS.search(query):
                self.memo.clear()
            elif (
                (DUE_AFTER in self.memo or HELD in self.memo)
                and query not in _keeps_queue_facts()
                and _WRITES_QUEUE.search(query)
            ):
                for key in QUEUE_FACTS:
                    self.memo.pop(key, None)
        disk = self._disk
        if disk.broken is not None:
            raise disk.broken_error()
        try:
            result = self._cur.execute(query, parameters)
        except duckdb.Error as exc:
            error = disk.failed(exc)
            if error is None:
                raise
            raise error from exc
        if disk.full_since is not None and query == "COMMIT":
            disk.committed()
        return result

    def close(self) -> None:
        self._cur.close()


def park_inactive(con: Any, webhook_ids: Sequence[str], now: datetime) -> int:
    """Pending rows of webhooks that are inactive or gone become parked (Event.DISABLE).

    Called with every batch of retries: asking the small webhooks table first spares the
    usual case, where every one of them is active, an UPDATE that scans the queue."""
    if not webhook_ids:
        return 0
    wanted = set(webhook_ids)
    active = active_hooks(con, wanted).keys()
    inactive = sorted(wanted - active)
    if not inactive:
        return 0
    rows = con.execute(query("park_inactive"), [now, inactive]).fetchall()
    return len(rows)


def _memo(con: Any) -> dict[str, Any] | None:
    """What this cursor remembers of the webhooks table, if it remembers (Cursor)."""
    return con.memo if isinstance(con, Cursor) and con.remembers else None


def remembered(con: Any, key: str, load: Callable[[Any], T]) -> T:
    """load(con), read once until the cursor forgets (see Cursor), or every time on a
    cursor that does not remember."""
    memo = _memo(con)
    if memo is None:
        return load(con)
    if key not in memo:
        memo[key] = load(con)
    value: T = memo[key]
    return value


def scanned_seq(con: Any) -> int:
    """The seq the scan has passed (the scanner cursor row)."""
    return int(con.execute(query("scan_cursor")).fetchone()[0])


def note(con: Any, value: Any) -> None:
    """Leave `value` for after this transaction commits (Cursor.take_notes)."""
    if isinstance(con, Cursor):
        con.notes.append(value)


def before_commit(con: Any, result: Any) -> None:
    """`result` (a batch function's answer for one operation) may reach its caller before
    the transaction commits (see Writer._execute): it claims only rows this transaction
    inserts, so if it never commits nothing durable says they were claimed, and the events
    are scanned again (at least once: a rollback means a duplicate, never a loss)."""
    if isinstance(con, Cursor):
        con.early.append(result)


def forget(con: Any, key: str) -> None:
    memo = _memo(con)
    if memo is not None:
        memo.pop(key, None)


def known(con: Any, key: str) -> Any:
    """What the cursor remembers under `key`, or None (forgotten, or a cursor that does
    not remember)."""
    memo = _memo(con)
    return None if memo is None else memo.get(key)


def remember(con: Any, key: str, value: Any) -> None:
    """What this transaction just wrote, kept as `remembered` keeps what it read (until
    the cursor forgets: a ROLLBACK undoes the write too)."""
    memo = _memo(con)
    if memo is not None:
        memo[key] = value


Hook = tuple[str, str, str | None, datetime | None, DeliveryOptions | None]


def active_hooks(con: Any, webhook_ids: set[str]) -> dict[str, Hook]:
    """URL, secret, previous secret and its expiry, and delivery options of the active
    webhooks among these; those remembered from an earlier claim are not read again (see
    Cursor)."""
    memo = _memo(con)
    known: dict[str, Hook] = {} if memo is None else memo.setdefault("hooks", {})
    missing = [w for w in webhook_ids if w not in known]
    if missing:
        known.update(
            (r[0], (r[1], r[2], r[3], r[4], network.decode(r[5])))
            for r in con.execute(query("active_hooks"), [missing]).fetchall()
        )
    return {w: known[w] for w in webhook_ids if w in known}
