"""The DuckDB implementation of the Store: two writer threads, one reader thread.

DuckDB allows one process to hold the file read-write, so at start-up every row left
inflight belongs to a process that is gone. Writes go through store.writer.Writer
(group commit); reads run on their own cursor in a reader thread so a long listing
never delays the commits of deliveries.

Ingests have a writer of their own. DuckDB runs the transactions of one process's
cursors side by side with optimistic concurrency, and an append to pipeline_events
conflicts with nothing the main writer does (it never writes that table), so a
producer's 202 waits for one small commit of its events, not for the main writer's
transaction of claims and outcomes. Once they are committed, the ingest writer kicks the
main writer (Writer.kick): the waiting scan and claim board a transaction at once, and
the new events are enqueued and claimed by the next commit.

Why the scanner, which tails pipeline_events by seq, cannot miss an event: seq comes from
a sequence when the row is inserted, and the one ingest thread commits its transactions
one after the other, so they commit in the order of their seqs. Any snapshot therefore
sees every committed seq up to its highest one (an aborted ingest leaves a gap nobody
fills). Two threads committing events could commit a lower seq after a scan had passed a
higher one: keep ingests on one thread (tests/test_ingest_writer.py catches the skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from webhookd import logs
from webhookd.events import NewEvent, same_content
from webhookd.states import Event, Status, sources
from webhookd.store.base import (
    RATE_LIMITED,
    UNSET,
    Claim,
    DeliveryFilter,
    EventConflict,
    FifoBlocked,
    IngestResult,
    NotFound,
    Ordering,
    Outcome,
    Page,
    Pruned,
    ScanResult,
    StatusReport,
    StorageFull,
    StoreUnavailable,
    Unset,
    WebhookLimits,
    WebhookPatch,
    burst,
)
from webhookd.store.pacing import Pace, cap, first_slot, tokens_now
from webhookd.store.records import (
    ATTEMPT_COLUMNS,
    DELIVERY_COLUMNS,
    WEBHOOK_COLUMNS,
    attempt_row,
    delivery_cursor,
    delivery_row,
    parse_delivery_cursor,
    signing_secrets,
    utcnow,
    webhook_row,
)
from webhookd.store.writer import Writer

log = logs.get("webhookd.store")

Q = "webhook_delivery_queue"
# An active webhook takes an event when it lists its type, or lists no type at all.
MATCHES = "w.active AND (len(w.event_types) = 0 OR list_contains(w.event_types, e.event_type))"

# Order inside one transaction of the main writer: outcomes free per-webhook slots, the
# scan enqueues the events committed before it began, and a claim then sees all of it, so
# that an event can be enqueued and claimed by the one commit after its ingest's.
CURSOR = "SELECT seq FROM scanner_cursor WHERE name = 'main'"
PRIORITY_OUTCOME = 0
PRIORITY_DEFAULT = 1
PRIORITY_SCAN = 2
PRIORITY_CLAIM = 3


T = TypeVar("T")

# A statement that changes the webhooks table (see _Cursor.memo).
_WRITES_WEBHOOKS = re.compile(r"\b(?:UPDATE|INSERT\s+INTO|DELETE\s+FROM)\s+webhooks\b", re.I)


def _in(statuses: Sequence[Status]) -> str:
    return "(" + ", ".join(f"'{s.value}'" for s in statuses) + ")"


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("webhookd.store").joinpath("sql", "duckdb")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def _open_connection(path: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    parent = path.parent
    if not parent.is_dir():
        raise StoreUnavailable(
            f"database.path: directory {str(parent)!r} does not exist; create it "
            "(systemd: StateDirectory=webhookd) or point database.path elsewhere"
        )
    if not os.access(parent, os.W_OK):
        raise StoreUnavailable(
            f"database.path: directory {str(parent)!r} is not writable by this user; "
            "fix its ownership or point database.path elsewhere"
        )
    try:
        # Never fetch or load extensions: a foreign file (SQLite, say) must not make the
        # daemon download code; it is simply not a webhookd database.
        con = duckdb.connect(
            str(path),
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
    except duckdb.IOException as exc:
        text = str(exc)
        if "Could not set lock" in text or "Conflicting lock" in text:
            raise StoreUnavailable(
                f"database.path: {str(path)!r} is held by another process ({text}); "
                "stop the other webhookd, or use the API/CLI instead of opening the file"
            ) from None
        raise StoreUnavailable(
            f"database.path: {str(path)!r} cannot be opened as a DuckDB database ({text}); "
            "is it a DuckDB file of this version? move it aside to start empty"
        ) from None
    except duckdb.Error as exc:
        raise StoreUnavailable(
            f"database.path: {str(path)!r} cannot be opened ({exc}); "
            "is it a DuckDB database? move it aside to start empty"
        ) from None
    # We checkpoint from the writer when it is idle; an automatic checkpoint inside a
    # big commit stalls every delivery behind it.
    con.execute("SET checkpoint_threshold = '256MB'")
    # Our statements are small and many: one DuckDB thread spends less on scheduling
    # than several, and leaves the other core to the event loop.
    con.execute("SET threads = 1")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    return con


def _migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, sql in _migrations():
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


# -- a full disk ------------------------------------------------------------------------
# Measured on DuckDB 2.0.1 (README, "A full disk"): a COMMIT that finds no room for the WAL
# fails ("Failed to commit: Could not write file ...wal: No space left on device"), rolls
# back and leaves the file as it was, and the same connection commits again once there is
# room. A CHECKPOINT that finds no room is worse: DuckDB invalidates the database, and every
# later statement on every cursor fails ("FATAL Error: Failed: database has been
# invalidated ...") until the file is closed and opened again.

# DuckDB quotes the OS (ENOSPC, EDQUOT); its temporary directory, which it sizes from the
# free space, says "failed to offload data block" when that is full.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "failed to offload data block")
INVALIDATED_WORDS = "database has been invalidated"
# An outcome the disk has no room for is kept and tried again every RETRY_OUTCOME seconds,
# for HOLD_OUTCOME seconds at most: well within the daemon's stall timeout (60 s by
# default), past which a call left unanswered stops the watchdog's pings. Then its caller
# is told, and the row, still inflight, is re-driven by its lease.
HOLD_OUTCOME = 20.0
RETRY_OUTCOME = 1.0
# A poll (scan, claim) or a chore (rescue, prune, release, auto-disable) that cannot commit
# for want of room is answered "nothing done" after this pause: not an error that its
# caller would log at every poll.
FULL_PAUSE = 0.5
# The episode ends when a commit that appended to the WAL succeeds with this much room left.
ROOM_AGAIN = 4 << 20
# A CHECKPOINT wrote about three quarters of the WAL's size into the file (measured): with
# less room than twice the WAL and this margin, it waits for room rather than invalidate
# the database.
CHECKPOINT_MARGIN = 8 << 20
REOPEN_EVERY = 1.0
# A disk full again this soon after it had room is the same episode, flapping at the edge:
# a warning, not another error.
FLAPPING = 60.0


class _Disk:
    """What the store knows of its database's storage, shared by its cursors (any thread):
    whether the disk is full (an episode: one error line when it starts, one info line when
    it ends), and whether DuckDB invalidated the database (until the store reopens it)."""

    def __init__(self, path: Path, on_broken: Callable[[], None]) -> None:
        self.path = path
        self.full_since: float | None = None
        self.broken: StoreUnavailable | None = None
        self._on_broken = on_broken
        self._wal_at_failure = -1
        self._reopen_failed = False
        self._ended = -FLAPPING
        self._lock = threading.Lock()

    def free(self) -> int:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    def wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}.wal").st_size
        except OSError:
            return -1

    def room_for_checkpoint(self) -> bool:
        return self.free() >= 2 * max(0, self.wal_size()) + CHECKPOINT_MARGIN

    def failed(self, exc: duckdb.Error) -> StoreUnavailable | None:
        """What a statement's failure means: StorageFull for a full disk, StoreUnavailable
        for a database DuckDB has invalidated, None for any other error (raised as it is)."""
        text = str(exc)
        full = any(words in text for words in DISK_FULL_WORDS)
        invalidated = INVALIDATED_WORDS in text or isinstance(exc, duckdb.FatalException)
        if not (full or invalidated):
            return None
        detail = " ".join(text.split())  # one line: an invalidation's message spans several
        # What callers (and the API's clients) see; the log line has DuckDB's words.
        error = (
            StorageFull("the database's disk is full: nothing was written; try again later")
            if full
            else StoreUnavailable("the database is being reopened after an error")
        )
        started = broke = False
        with self._lock:
            if full:
                self._wal_at_failure = self.wal_size()
                if self.full_since is None:
                    self.full_since = time.monotonic()
                    started = True
            if invalidated and self.broken is None:
                self.broken = error
                broke = True
        if started:
            again = time.monotonic() - self._ended < FLAPPING
            (log.warning if again else log.error)(
                "the database's disk is full again"
                if again
                else "the database's disk is full: ingest answers 503 storage_full and "
                "deliveries wait until there is room (logged once until it has room again)",
                path=str(self.path),
                free_bytes=self.free(),
                error=detail,
            )
        if broke:
            (log.warning if full else log.error)(
                "DuckDB invalidated the database; reopening it", path=str(self.path), error=detail
            )
            self._on_broken()
        return error

    def broken_error(self) -> StoreUnavailable:
        broken = self.broken
        if broken is None:
            return StoreUnavailable("the database is reopening")
        return type(broken)(str(broken))  # a fresh one for each caller (its traceback)

    def committed(self) -> None:
        """A commit succeeded during an episode: it ends once a commit appended to the WAL
        (one that wrote nothing proves nothing) with room to spare."""
        if (
            self.broken is not None
            or self.wal_size() == self._wal_at_failure
            or self.free() < ROOM_AGAIN
        ):
            return
        with self._lock:
            since, self.full_since = self.full_since, None
            self._ended = time.monotonic()
        if since is not None:
            log.info(
                "the database's disk has room again: ingest and deliveries resume",
                path=str(self.path),
                free_bytes=self.free(),
                seconds=round(time.monotonic() - since, 1),
            )

    def reopen_failed(self, problem: str) -> None:
        if not self._reopen_failed:
            self._reopen_failed = True
            log.warning("cannot reopen the database yet; trying every second", error=problem)

    def reopened(self) -> None:
        with self._lock:
            self.broken = None
            self._reopen_failed = False
            self._wal_at_failure = self.wal_size()  # replaying the WAL may have changed it
        log.info("the database was reopened", path=str(self.path))


class _Cursor:
    """A cursor of the store's connection, through which every statement runs: DuckDB's
    words for a full disk become StorageFull, and while the database is invalidated every
    statement fails at once, without DuckDB, until the store has reopened it (attach).

    The main writer's cursor remembers what it read of the small webhooks table (`memo`,
    see _remembered): which webhooks are fifo, asked after every batch of outcomes and
    every scan, the paced ones, and the URL and secrets of the active ones a claim hands
    out or a retry asks about (_active_hooks). DuckDB plans and runs
    each of those SELECTs in 1-2 ms, a tenth of the writer's time under load. Every
    statement that writes the table runs on this cursor and makes it forget all of it,
    as does a ROLLBACK (the transaction may have read its own uncommitted changes)."""

    __slots__ = ("_cur", "_disk", "memo", "remembers")

    def __init__(
        self, cur: duckdb.DuckDBPyConnection, disk: _Disk, *, remembers: bool = False
    ) -> None:
        self._cur = cur
        self._disk = disk
        self.remembers = remembers
        self.memo: dict[str, Any] = {}

    def attach(self, cur: duckdb.DuckDBPyConnection) -> None:
        self._cur = cur
        self.memo.clear()

    def execute(self, query: str, parameters: object = None) -> duckdb.DuckDBPyConnection:
        if self.memo and (query == "ROLLBACK" or _WRITES_WEBHOOKS.search(query)):
            self.memo.clear()
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


class _MainWriter(Writer):
    """The main writer, which keeps the outcomes the disk had no room for (or that met a
    database being reopened) and tries them again as riders: due every RETRY_OUTCOME
    seconds, and boarding any transaction that starts meanwhile, for HOLD_OUTCOME seconds
    at most. It overrides Writer._resolve, where every result passes before its future is
    settled: a held outcome's future stays unsettled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held_since: dict[int, float] = {}

    def _resolve(self, results: list[tuple[Any, Any, BaseException | None]]) -> None:
        if not self._held_since and all(exc is None for _, _, exc in results):
            super()._resolve(results)
            return
        now = time.monotonic()
        told = []
        for item in results:
            op, _, exc = item
            if isinstance(exc, StoreUnavailable) and op.fn is _record and not self._closed:
                since = self._held_since.setdefault(id(op), now)
                if now - since < HOLD_OUTCOME:
                    op.ride_until = now + RETRY_OUTCOME
                    self._riders.append(op)
                    continue
            self._held_since.pop(id(op), None)
            told.append(item)
        super()._resolve(told)


def _probe(con: Any) -> None:
    """A write of one value, so that _Disk.committed sees whether there is room again with
    no other writes coming: scanner_cursor.updated_at (which nothing reads) set to now."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("UPDATE scanner_cursor SET updated_at = ? WHERE name = 'main'", [utcnow()])
        con.execute("COMMIT")
    except Exception:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise


class DuckDBStore:
    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "1GB",
        checkpoint_interval: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._memory_limit = memory_limit
        self._checkpoint_interval = checkpoint_interval
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer: Writer | None = None
        self._ingest_writer: Writer | None = None
        # Taken by the ingest writer for each transaction and by a CHECKPOINT, which DuckDB
        # refuses while another write transaction is open.
        self._gate = threading.Lock()
        # Held by the main writer for each transaction: with both gates and the reader's
        # thread, a reopen (see _reopen) knows no statement runs.
        self._main_gate = threading.Lock()
        self._disk = _Disk(self.path, self._broken)
        self._cursors: list[_Cursor] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._checkpoint_postponed = False
        self._reader_con: _Cursor | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="webhookd-reader")
        self._last_checkpoint = time.monotonic()
        self.migrations_applied: list[int] = []

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="webhookd-reader")
        loop = asyncio.get_running_loop()
        self._con = await loop.run_in_executor(
            self._reader, _open_connection, self.path, self._memory_limit
        )
        self.migrations_applied = await loop.run_in_executor(self._reader, _migrate, self._con)
        self._loop = loop
        self._cursors = [
            _Cursor(self._con.cursor(), self._disk, remembers=i == 1) for i in range(3)
        ]
        self._reader_con = self._cursors[0]
        writer = _MainWriter(
            self._cursors[1], idle=self._idle, idle_every=1.0, gate=self._main_gate
        )
        self._writer = writer
        self._ingest_writer = Writer(
            self._cursors[2],
            name="webhookd-ingest",
            on_commit=lambda: writer.kick(_new_events),
            gate=self._gate,
        )
        writer.start()
        self._ingest_writer.start()

    async def close(self) -> None:
        if self._ingest_writer is not None:
            # First: its last commits kick the main writer, which is still running.
            ingests, self._ingest_writer = self._ingest_writer, None
            await asyncio.get_running_loop().run_in_executor(None, ingests.stop)
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)
        if self._reopening is not None:
            self._reopening.cancel()
        if self._con is not None:
            self._reader_con = None

            def shut() -> None:
                # On the reader's thread: after a reopen under way, if any.
                con, self._con = self._con, None
                if con is None:
                    return
                # Without room, the WAL stays, and is replayed at the next start.
                if self._disk.broken is None and self._disk.room_for_checkpoint():
                    with contextlib.suppress(duckdb.Error):
                        con.execute("CHECKPOINT")
                with contextlib.suppress(duckdb.Error):
                    con.close()  # and its cursors

            await asyncio.get_running_loop().run_in_executor(self._reader, shut)
        self._reader.shutdown(wait=True)

    def _broken(self) -> None:
        """DuckDB invalidated the database (called on the thread that saw it): reopen it."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left
                self._loop.call_soon_threadsafe(self._reopen_soon)

    def _reopen_soon(self) -> None:
        if self._con is not None and (self._reopening is None or self._reopening.done()):
            self._reopening = asyncio.create_task(self._reopen_until_done(), name="reopen")

    async def _reopen_until_done(self) -> None:
        loop = asyncio.get_running_loop()
        while self._con is not None:
            if await loop.run_in_executor(self._reader, self._reopen):
                return
            await asyncio.sleep(REOPEN_EVERY)

    def _reopen(self) -> bool:
        """On the reader's thread (no read runs), with both gates held (no transaction is
        under way): close the invalidated connection, open the file again, and point the
        store's cursors at the new connection. The writers keep their queues: what failed
        meanwhile failed with StorageFull or StoreUnavailable, and outcomes were kept."""
        with self._main_gate, self._gate:
            if self._con is None:
                return True
            with contextlib.suppress(duckdb.Error):
                self._con.close()
            try:
                con = _open_connection(self.path, self._memory_limit)
            except StoreUnavailable as exc:
                self._disk.reopen_failed(str(exc))
                return False
            self._con = con
            for cursor in self._cursors:
                cursor.attach(con.cursor())
            self._disk.reopened()
        return True

    def _idle(self, con: Any, busy: bool) -> None:
        if self._disk.full_since is not None or self._disk.broken is not None:
            # No CHECKPOINT while the disk is full (one that runs out of room invalidates
            # the database), but a small write, once a second, to see when there is room.
            if self._disk.broken is None:
                with self._main_gate:
                    _probe(con)
            return
        since = time.monotonic() - self._last_checkpoint
        # Bound the WAL (replay time at start-up) even when the writer is never idle.
        if (not busy and since >= self._checkpoint_interval) or (
            since >= 4 * self._checkpoint_interval
        ):
            # The gate holds the ingest writer between its transactions: DuckDB refuses a
            # CHECKPOINT while another write transaction is open ("Cannot CHECKPOINT: there
            # are other write transactions active"), and a steady flow of ingests would
            # otherwise keep one open most of the time.
            if not self._disk.room_for_checkpoint():
                if not self._checkpoint_postponed:
                    self._checkpoint_postponed = True
                    log.warning(
                        "checkpoint postponed: too little free space beside the WAL",
                        free_bytes=self._disk.free(),
                        wal_bytes=self._disk.wal_size(),
                    )
                return
            self._checkpoint_postponed = False
            with self._gate:
                con.execute("CHECKPOINT")
            self._last_checkpoint = time.monotonic()

    async def _write(
        self,
        fn: Any,
        payload: Any,
        priority: int = PRIORITY_DEFAULT,
        ride: float = 0.0,
        rides_with: frozenset[Any] | None = None,
    ) -> Any:
        if self._writer is None:
            raise StoreUnavailable("the database is closed")
        try:
            return await self._writer.submit(
                fn, payload, priority=priority, ride=ride, rides_with=rides_with
            )
        except StoreUnavailable:
            if fn not in _NOTHING_DONE:
                raise
        # A poll or a chore that could not commit for want of room (or while the database
        # is reopened): nothing done now, and the caller asks again.
        await asyncio.sleep(FULL_PAUSE)
        if fn is _scan or fn is _scan_carefully:
            try:
                cursor = await self._read(_scan_cursor)
            except StoreUnavailable:
                cursor = 0
            return ScanResult(0, 0, int(cursor))
        return _NOTHING_DONE[fn]()

    async def _read(self, fn: Any, *args: Any) -> Any:
        con = self._reader_con
        if con is None:
            raise StoreUnavailable("the database is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, con, *args)

    def healthy(self) -> bool:
        return (
            self._writer is not None
            and self._writer.healthy()
            and (self._ingest_writer is None or self._ingest_writer.healthy())
        )

    def available(self) -> bool:
        """Open and writable (for /readyz): False while the disk is full or the database
        is being reopened. The process is not stuck then: healthy() stays true."""
        return self._con is not None and self._disk.full_since is None and self._disk.broken is None

    def stats(self) -> dict[str, int]:
        transactions, operations = self.writer_stats
        return {"transactions": transactions, "operations": operations}

    @property
    def writer_stats(self) -> tuple[int, int]:
        """Transactions and operations of both writers."""
        writers = [w for w in (self._writer, self._ingest_writer) if w is not None]
        return (sum(w.transactions for w in writers), sum(w.operations for w in writers))

    # -- start-up and upkeep -------------------------------------------------------

    async def rescue_orphans(self) -> int:
        return int(await self._write(_rescue, None))

    async def rescue_expired(self, now: datetime) -> int:
        return int(await self._write(_rescue, now))

    async def prune(self, delivered_before: datetime, log_before: datetime, batch: int) -> Pruned:
        result: Pruned = await self._write(_prune, (delivered_before, log_before, batch))
        return result

    async def auto_disable(self, failing_before: datetime) -> list[str]:
        result: list[str] = await self._write(_auto_disable, failing_before)
        return result

    async def checkpoint(self) -> None:
        self._last_checkpoint = 0.0  # the writer checkpoints at its next idle moment

    # -- the data path ---------------------------------------------------------------

    async def ingest(self, events: list[NewEvent]) -> IngestResult:
        """Committed by the ingest writer (see the module's docstring), in small group
        commits of their own; an id already stored fails its transaction at COMMIT (the
        primary key), and that ingest is retried with the look-up."""
        writer = self._ingest_writer
        if writer is None:
            raise StoreUnavailable("the database is closed")
        try:
            result = await writer.submit(_ingest, events)
        except duckdb.ConstraintException:
            # An id already stored (a re-post, or a conflict): look the ids up this time.
            result = await writer.submit(_ingest_carefully, events)
        if isinstance(result, EventConflict):
            raise result
        assert isinstance(result, IngestResult)
        return result

    async def scan(self, batch_size: int, *, ride: float = 0.0) -> ScanResult:
        try:
            # Only ingests bring events to scan: a waiting scan boards the transaction that
            # the ingest writer's kick starts once they are committed.
            result: ScanResult = await self._write(
                _scan, batch_size, PRIORITY_SCAN, ride, NEW_EVENTS
            )
        except duckdb.ConstraintException:
            # A row the scan would insert exists: should never happen (see _scan_once),
            # but must not stop the scanner for good.
            log.warning("scan met an existing queue row; scanning with ON CONFLICT")
            result = await self._write(_scan_carefully, batch_size, PRIORITY_SCAN)
        return result

    async def claim(
        self,
        limit: int,
        per_webhook: int,
        lease: float,
        caps: Mapping[str, int] | None = None,
        *,
        ride: float = 0.0,
        with_new_events: bool = False,
    ) -> list[Claim]:
        result: list[Claim] = await self._write(
            _claim,
            (limit, per_webhook, lease, dict(caps or {})),
            PRIORITY_CLAIM,
            ride,
            NEW_EVENTS if with_new_events else None,
        )
        return result

    def record(self, outcome: Outcome) -> asyncio.Future[None]:
        if self._writer is None:
            raise StoreUnavailable("the database is closed")
        future: asyncio.Future[None] = self._writer.submit(
            _record, outcome, priority=PRIORITY_OUTCOME
        )
        return future

    async def release(self, keys: list[tuple[str, str]]) -> int:
        return int(await self._write(_release, keys, PRIORITY_OUTCOME))

    # -- webhooks ---------------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        event_types: list[str],
        secret: str,
        description: str,
        limits: WebhookLimits | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self._write(
            _create_webhook, (url, event_types, secret, description, limits or WebhookLimits())
        )
        return result

    async def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._read(_get_webhook, webhook_id)
        return result

    async def get_webhook_secrets(self, webhook_id: str) -> tuple[str, tuple[str, ...]]:
        """(url, signing secrets) for the test route; never exposed through the API."""
        result: tuple[str, tuple[str, ...]] = await self._read(_webhook_secrets, webhook_id)
        return result

    async def list_webhooks(self, limit: int, after: str | None) -> Page:
        result: Page = await self._read(_list_webhooks, limit, after)
        return result

    async def update_webhook(self, webhook_id: str, patch: WebhookPatch) -> dict[str, Any]:
        result = await self._write(_update_webhook, (webhook_id, patch))
        if isinstance(result, NotFound):
            raise result
        assert isinstance(result, dict)
        return result

    async def delete_webhook(self, webhook_id: str) -> None:
        result = await self._write(_delete_webhook, webhook_id)
        if isinstance(result, NotFound):
            raise result

    async def rotate_secret(self, webhook_id: str, secret: str, grace: float) -> dict[str, Any]:
        result = await self._write(_rotate_secret, (webhook_id, secret, grace))
        if isinstance(result, NotFound):
            raise result
        assert isinstance(result, dict)
        return result

    # -- operators ------------------------------------------------------------------------

    async def list_deliveries(self, filt: DeliveryFilter, limit: int, after: str | None) -> Page:
        result: Page = await self._read(_list_deliveries, filt, limit, after)
        return result

    async def list_attempts(self, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._read(_list_attempts, webhook_id, event_id)
        return result

    async def redrive(self, status: Status, webhook_id: str | None, since: datetime | None) -> int:
        return int(await self._write(_redrive, (status, webhook_id, since)))

    async def replay(self, event_id: str, webhook_id: str | None) -> int:
        result = await self._write(_replay, (event_id, webhook_id))
        if isinstance(result, NotFound):
            raise result
        return int(result)

    async def status(self) -> StatusReport:
        result: StatusReport = await self._read(_status)
        return result


# ---------------------------------------------------------------------------------------
# Batch functions. Each runs on the writer thread inside a transaction the writer owns,
# takes every payload of its kind queued since the last commit, and returns one result
# per payload. Expected failures are returned as values so they do not abort the batch.
# ---------------------------------------------------------------------------------------


def _park_inactive(con: Any, webhook_ids: Sequence[str], now: datetime) -> int:
    """Pending rows of webhooks that are inactive or gone become parked (Event.DISABLE).

    Called with every batch of retries: asking the small webhooks table first spares the
    usual case, where every one of them is active, an UPDATE that scans the queue."""
    if not webhook_ids:
        return 0
    wanted = set(webhook_ids)
    active = _active_hooks(con, wanted).keys()
    inactive = sorted(wanted - active)
    if not inactive:
        return 0
    rows = con.execute(
        f"""
        UPDATE {Q} SET status = '{Status.PARKED}', lease_until = NULL, updated_at = ?
        WHERE status IN {_in(sources(Event.DISABLE))}
          AND list_contains(?::VARCHAR[], webhook_id)
        RETURNING 1
        """,
        [now, inactive],
    ).fetchall()
    return len(rows)


def _memo(con: Any) -> dict[str, Any] | None:
    """What this cursor remembers of the webhooks table, if it remembers (_Cursor)."""
    return con.memo if isinstance(con, _Cursor) and con.remembers else None


def _remembered(con: Any, key: str, load: Callable[[Any], T]) -> T:
    """load(con), read once until the cursor forgets (see _Cursor), or every time on a
    cursor that does not remember."""
    memo = _memo(con)
    if memo is None:
        return load(con)
    if key not in memo:
        memo[key] = load(con)
    value: T = memo[key]
    return value


def _fifo_ids(con: Any, webhook_ids: Sequence[str] | None = None) -> list[str]:
    """The fifo webhooks among `webhook_ids` (all of them if None)."""
    if webhook_ids is not None and not webhook_ids:
        return []
    fifo = _remembered(con, "fifo", _read_fifo)
    return sorted(fifo if webhook_ids is None else fifo.intersection(webhook_ids))


def _read_fifo(con: Any) -> frozenset[str]:
    return frozenset(
        r[0]
        for r in con.execute(
            f"SELECT webhook_id FROM webhooks WHERE ordering = '{Ordering.FIFO}'"
        ).fetchall()
    )


def _settle_fifo(con: Any, webhook_ids: Sequence[str] | None, now: datetime) -> None:
    """Restore the order of the fifo webhooks among `webhook_ids` (every fifo webhook if
    None) after their rows changed: the head, the lowest seq of a webhook's pending and
    inflight rows, is the only row of it that may be due; its other pending rows wait
    with no next_attempt_at. A head that waits is made due now (promoted); a pending row
    behind the head that has a time loses it (a lower seq came back: redrive, replay).
    Rows already inflight stay so: a head behind them waits until they have an outcome
    (the claim gives a fifo webhook nothing while one of its rows is inflight)."""
    fifo = _fifo_ids(con, webhook_ids)
    if not fifo:
        return
    con.execute(
        f"""
        UPDATE {Q} AS q
        SET next_attempt_at = CASE WHEN q.seq = h.head THEN ? ELSE NULL END, updated_at = ?
        FROM (SELECT webhook_id, min(seq) AS head FROM {Q}
              WHERE status IN ('{Status.PENDING}', '{Status.INFLIGHT}')
                AND list_contains(?::VARCHAR[], webhook_id)
              GROUP BY webhook_id) h
        WHERE q.webhook_id = h.webhook_id AND q.status = '{Status.PENDING}'
          AND ((q.seq = h.head AND q.next_attempt_at IS NULL)
               OR (q.seq > h.head AND q.next_attempt_at IS NOT NULL))
        """,
        [now, now, fifo],
    )


def _rescue(con: Any, payloads: Sequence[datetime | None]) -> list[int]:
    results = []
    for expired_before in payloads:
        now = utcnow()
        condition = "" if expired_before is None else "AND lease_until < ?"
        params: list[Any] = [now, now] if expired_before is None else [now, now, expired_before]
        rows = con.execute(
            f"""
            UPDATE {Q} SET status = '{Status.PENDING}', lease_until = NULL,
                next_attempt_at = ?, updated_at = ?
            WHERE status IN {_in(sources(Event.LEASE_EXPIRED))} {condition}
            RETURNING webhook_id
            """,
            params,
        ).fetchall()
        _park_inactive(con, [r[0] for r in rows], now)
        _settle_fifo(con, [r[0] for r in rows], now)
        results.append(len(rows))
    return results


def _ingest(con: Any, payloads: Sequence[list[NewEvent]]) -> list[IngestResult | EventConflict]:
    """Insert the events, trusting the primary key to refuse an id already stored: looking
    every id up first costs a pass over the event ids (30 ms at a million events), the
    key's check about 2 us an event. A refused id fails the transaction; the store then
    retries with _ingest_carefully, which tells a re-post from a conflict."""
    return _ingest_new(con, payloads, {})


def _ingest_carefully(
    con: Any, payloads: Sequence[list[NewEvent]]
) -> list[IngestResult | EventConflict]:
    all_ids = list({e.event_id for events in payloads for e in events})
    existing: dict[str, tuple[str, str]] = {
        row[0]: (row[1], row[2])
        for row in con.execute(
            "SELECT event_id, event_type, payload::VARCHAR FROM pipeline_events "
            "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
            [all_ids],
        ).fetchall()
    }
    return _ingest_new(con, payloads, existing)


def _ingest_new(
    con: Any, payloads: Sequence[list[NewEvent]], existing: dict[str, tuple[str, str]]
) -> list[IngestResult | EventConflict]:
    """Insert what is new; `existing` maps the ids already stored to (type, payload)."""
    new_events: list[NewEvent] = []
    results: list[IngestResult | EventConflict] = []
    now = utcnow()
    for events in payloads:
        conflicts: list[str] = []
        fresh: dict[str, NewEvent] = {}
        for event in events:
            known = existing.get(event.event_id)
            if known is None and event.event_id in fresh:
                prior = fresh[event.event_id]
                known = (prior.event_type, prior.payload)
            if known is not None:
                if not same_content(known[0], known[1], event):
                    conflicts.append(event.event_id)
                continue
            fresh[event.event_id] = event
        if conflicts:
            results.append(EventConflict(sorted(set(conflicts))))
            continue
        for event in fresh.values():
            existing[event.event_id] = (event.event_type, event.payload)
        new_events.extend(fresh.values())
        results.append(IngestResult([e.event_id for e in events], len(fresh)))
    if new_events:
        con.execute(
            """
            INSERT INTO pipeline_events
                (event_id, event_type, payload, body, occurred_at, ingested_at)
            SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]),
                   unnest(?::BLOB[]), unnest(?::TIMESTAMP[]), ?
            """,
            [
                [e.event_id for e in new_events],
                [e.event_type for e in new_events],
                [e.payload for e in new_events],
                [e.body for e in new_events],
                [e.occurred_at.replace(tzinfo=None) for e in new_events],
                now,
            ],
        )
    return results


def _new_events(con: Any, payloads: Sequence[None]) -> list[None]:
    """The kind of the ingest writer's kicks (Writer.kick): never run, it names the work
    that scans, and claims that wait for new events, ride with."""
    return [None] * len(payloads)


NEW_EVENTS = frozenset({_new_events})


def _scan_cursor(con: Any) -> int:
    return int(con.execute(CURSOR).fetchone()[0])


def _scan(con: Any, payloads: Sequence[int]) -> list[ScanResult]:
    return [_scan_once(con, batch_size, careful=False) for batch_size in payloads]


def _scan_carefully(con: Any, payloads: Sequence[int]) -> list[ScanResult]:
    return [_scan_once(con, batch_size, careful=True) for batch_size in payloads]


def _scan_once(con: Any, batch_size: int, *, careful: bool, upto: int | None = None) -> ScanResult:
    """Enqueue the events after the cursor (at most `batch_size`, none after `upto`) and
    advance the cursor, in the caller's transaction.

    A (webhook, event) row can only exist already if something enqueued an event the
    cursor had not passed; replay scans first so that nothing does. So the insert needs
    no ON CONFLICT, which costs DuckDB a few milliseconds a statement however few the
    rows: `careful` adds it back for the retry after a conflict (see DuckDBStore.scan).
    """
    cursor, n_events, high = con.execute(
        f"SELECT ({CURSOR}), count(*), max(seq) FROM (SELECT seq FROM pipeline_events "
        f"WHERE seq > ({CURSOR}) AND seq <= ? ORDER BY seq LIMIT ?)",
        [upto if upto is not None else 2**62, batch_size],
    ).fetchone()
    if not n_events:
        return ScanResult(0, 0, cursor)
    now = utcnow()
    # A fifo webhook's new rows wait behind its head (no next_attempt_at); _settle_fifo
    # makes the lowest due if the webhook had no head.
    (enqueued,) = con.execute(
        f"""
        INSERT INTO {Q} (webhook_id, event_id, status, attempts, retry_base,
                         next_attempt_at, body, created_at, updated_at, seq)
        SELECT w.webhook_id, e.event_id, '{Status.PENDING}', 0, 0,
               CASE WHEN w.ordering = '{Ordering.FIFO}' THEN NULL ELSE ?::TIMESTAMP END,
               e.body, ?, ?, e.seq
        FROM pipeline_events e
        JOIN webhooks w ON {MATCHES}
        WHERE e.seq > ? AND e.seq <= ?
        {"ON CONFLICT DO NOTHING" if careful else ""}
        """,
        [now, now, now, cursor, high],
    ).fetchone()
    con.execute(
        "UPDATE scanner_cursor SET seq = ?, updated_at = ? WHERE name = 'main'", [high, now]
    )
    if enqueued:
        _settle_fifo(con, None, now)
    return ScanResult(n_events, int(enqueued), high)


def _paces(con: Any) -> dict[str, Pace]:
    """The active webhooks with a setting of their own (fifo, max_in_flight, rate_limit):
    a few rows of the small webhooks table, remembered until it changes (a claim that
    draws on a rate limit's bucket writes it: see _Cursor)."""
    return _remembered(con, "paces", _read_paces)


def _read_paces(con: Any) -> dict[str, Pace]:
    return {
        r[0]: Pace(*r)
        for r in con.execute(
            "SELECT webhook_id, ordering, max_in_flight, rate_limit, rate_tokens, "
            "rate_refilled_at, rate_next_at FROM webhooks WHERE active AND "
            "(ordering = 'fifo' OR max_in_flight IS NOT NULL OR rate_limit IS NOT NULL)"
        ).fetchall()
    }


def _claim(
    con: Any, payloads: Sequence[tuple[int, int, float, dict[str, int]]]
) -> list[list[Claim]]:
    """Due rows, oldest first, no webhook beyond its cap, now inflight.

    Cost must not grow with the backlog or the delivered rows: a few simple statements
    (DuckDB plans and runs each in about a millisecond, a composed query costs more):
    rows held per webhook; the webhooks with settings of their own; a top-N of due rows
    of webhooks below their cap, with their bodies; their webhooks; then the update by
    rowid (RETURNING on this table, which has a primary key, costs several times the
    update). Lists are matched with list_contains: `IN (SELECT unnest(?))` plans a
    semi-join that costs twice as much.

    A webhook's cap (store/pacing.py): fifo 1, else what the pool asked, within its
    max_in_flight if it is rate-limited. Rows waiting behind a fifo head have no
    next_attempt_at and are never due. A rate-limited webhook takes a token per row; its
    candidates the bucket cannot serve are moved to the next free slots, once each.
    """
    results: list[list[Claim]] = []
    for limit, per_webhook, lease, caps in payloads:
        now = utcnow()
        held: dict[str, int] = dict(
            con.execute(
                f"SELECT webhook_id, count(*) FROM {Q} "
                f"WHERE status = '{Status.INFLIGHT}' GROUP BY webhook_id"
            ).fetchall()
        )
        paces = _paces(con)
        room = {w: cap(paces.get(w), per_webhook, caps.get(w)) for w in {*held, *caps, *paces}}
        full = [w for w, n in held.items() if n >= room[w]]
        candidates = con.execute(
            f"""
            SELECT rowid, webhook_id, event_id, attempts, retry_base, body FROM {Q}
            WHERE status IN {_in(sources(Event.CLAIM))} AND next_attempt_at <= ?
              AND NOT list_contains(?::VARCHAR[], webhook_id)
            ORDER BY next_attempt_at
            LIMIT ?
            """,
            [now, full, limit * 4],
        ).fetchall()
        if not candidates:
            results.append([])
            continue
        hooks = _active_hooks(con, {c[1] for c in candidates})
        strays = {c[1] for c in candidates} - hooks.keys()
        if strays:
            # Pending rows of a webhook that is gone or inactive: park them (Event.DISABLE)
            # rather than let them fill the head of the queue.
            _park_inactive(con, list(strays), now)
        tokens = {w: tokens_now(p, now) for w, p in paces.items() if p.rate_limit is not None}
        taken: dict[str, list[int]] = {}  # rate-limited webhook: rowids handed out
        short: set[str] = set()  # rate-limited webhooks with due rows the bucket cannot serve
        rank: dict[str, int] = {}
        picked: list[Any] = []
        for row in candidates:
            webhook_id = row[1]
            if webhook_id in strays:
                continue
            n = rank[webhook_id] = rank.get(webhook_id, 0) + 1
            if held.get(webhook_id, 0) + n > room.get(webhook_id, per_webhook):
                continue  # waits for its cap, as it is
            if webhook_id in tokens and n > math.floor(tokens[webhook_id]):
                short.add(webhook_id)  # waits for a token
                continue
            if len(picked) == limit:
                continue  # left due for the next claim
            picked.append(row)
            if webhook_id in tokens:
                taken.setdefault(webhook_id, []).append(row[0])
        _pace_rate_limited(con, paces, tokens, taken, short, now)
        rowids = [p[0] for p in picked]
        lease_until = now + timedelta(seconds=lease)
        con.execute(
            f"""
            UPDATE {Q} SET status = '{Status.INFLIGHT}', lease_until = ?, updated_at = ?
            WHERE list_contains(?::BIGINT[], rowid)
            """,
            [lease_until, now, rowids],
        )
        claims = []
        for _, webhook_id, event_id, attempts, base, body in picked:
            url, secret, prev, prev_exp = hooks[webhook_id]
            secrets = signing_secrets(secret, prev, prev_exp, now)
            pace = paces.get(webhook_id)
            claims.append(
                Claim(
                    webhook_id,
                    event_id,
                    attempts + 1,
                    attempts + 1 - base,
                    url,
                    secrets,
                    bytes(body),
                    lease_until,
                    None if pace is None else pace.own_cap(),
                    pace is not None and pace.paced,
                )
            )
        results.append(claims)
    return results


def _active_hooks(
    con: Any, webhook_ids: set[str]
) -> dict[str, tuple[str, str, str | None, datetime | None]]:
    """URL, secret, previous secret and its expiry of the active webhooks among these;
    those remembered from an earlier claim are not read again (see _Cursor)."""
    memo = _memo(con)
    known: dict[str, tuple[str, str, str | None, datetime | None]] = (
        {} if memo is None else memo.setdefault("hooks", {})
    )
    missing = [w for w in webhook_ids if w not in known]
    if missing:
        known.update(
            (r[0], (r[1], r[2], r[3], r[4]))
            for r in con.execute(
                "SELECT webhook_id, url, secret, previous_secret, previous_secret_expires_at "
                "FROM webhooks WHERE active AND list_contains(?::VARCHAR[], webhook_id)",
                [missing],
            ).fetchall()
        )
    return {w: known[w] for w in webhook_ids if w in known}


def _pace_rate_limited(
    con: Any,
    paces: dict[str, Pace],
    tokens: dict[str, float],
    taken: dict[str, list[int]],
    short: set[str],
    now: datetime,
) -> None:
    """Write back the buckets a claim drew on, and move every due row of a webhook whose
    bucket came up short (but those handed out) to its next free slots (store/pacing.py),
    in one statement each: no attempt, no log row, and no later claim reads them before
    their time."""
    touched = sorted(w for w in tokens if w in taken or w in short)
    if not touched:
        return
    next_at: dict[str, datetime | None] = {w: paces[w].next_at for w in touched}
    for w in sorted(short):
        pace = paces[w]
        assert pace.rate_limit is not None
        first = first_slot(pace, tokens[w] - len(taken.get(w, ())), now)
        step = round(1_000_000 / pace.rate_limit)  # microseconds
        (moved,) = con.execute(
            f"""
            UPDATE {Q} AS q SET next_attempt_at = ? + to_microseconds((v.k - 1) * ?),
                last_error = ?, updated_at = ?
            FROM (SELECT rowid AS id,
                         row_number() OVER (ORDER BY next_attempt_at, seq, event_id) AS k
                  FROM {Q}
                  WHERE webhook_id = ? AND status = '{Status.PENDING}' AND next_attempt_at <= ?
                    AND NOT list_contains(?::BIGINT[], rowid)) v
            WHERE q.rowid = v.id
            """,
            [first, step, RATE_LIMITED, now, w, now, taken.get(w, [])],
        ).fetchone()
        next_at[w] = first + timedelta(microseconds=moved * step)
    con.execute(
        """
        UPDATE webhooks SET rate_tokens = v.tokens, rate_refilled_at = ?, rate_next_at = v.next_at
        FROM (SELECT unnest(?::VARCHAR[]) AS webhook_id, unnest(?::DOUBLE[]) AS tokens,
                     unnest(?::TIMESTAMP[]) AS next_at) v
        WHERE webhooks.webhook_id = v.webhook_id
        """,
        [
            now,
            touched,
            [tokens[w] - len(taken.get(w, ())) for w in touched],
            [next_at[w] for w in touched],
        ],
    )


def _record(con: Any, outcomes: Sequence[Outcome]) -> list[None]:
    """Apply outcomes in one UPDATE and log the attempts made in one INSERT.

    An outcome that was not spent (the daemon's own resources failed, Outcome.spent)
    sets the row's state, next attempt and error but keeps its attempt count and last
    attempt time, and writes no log row: the log is what auto-disable reads."""
    now = utcnow()
    columns = [
        [o.webhook_id for o in outcomes],
        [o.event_id for o in outcomes],
        [str(o.status) for o in outcomes],
        [o.attempt for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        [o.status_code for o in outcomes],
        [o.error for o in outcomes],
        [o.attempted_at for o in outcomes],
        [o.claimed_until for o in outcomes],
        [o.spent for o in outcomes],
    ]
    con.execute(
        f"""
        UPDATE {Q} AS q SET status = o.status,
            attempts = CASE WHEN o.spent THEN o.attempt ELSE q.attempts END,
            next_attempt_at = o.next_attempt_at, lease_until = NULL,
            last_status_code = o.status_code, last_error = o.error,
            last_attempt_at = CASE WHEN o.spent THEN o.attempted_at ELSE q.last_attempt_at END,
            updated_at = ?
        FROM (SELECT unnest(?::VARCHAR[]) AS webhook_id, unnest(?::VARCHAR[]) AS event_id,
                     unnest(?::VARCHAR[]) AS status, unnest(?::INTEGER[]) AS attempt,
                     unnest(?::TIMESTAMP[]) AS next_attempt_at,
                     unnest(?::INTEGER[]) AS status_code, unnest(?::VARCHAR[]) AS error,
                     unnest(?::TIMESTAMP[]) AS attempted_at,
                     unnest(?::TIMESTAMP[]) AS claimed_until,
                     unnest(?::BOOLEAN[]) AS spent) o
        WHERE q.webhook_id = o.webhook_id AND q.event_id = o.event_id
          AND q.status = '{Status.INFLIGHT}'
          AND (o.claimed_until IS NULL OR q.lease_until = o.claimed_until)
        """,
        [now, *columns],
    )
    made = [o for o in outcomes if o.spent]
    if made:
        con.execute(
            """
            INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at,
                                            duration_ms, status_code, error,
                                            response_excerpt, outcome)
            SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::INTEGER[]),
                   unnest(?::TIMESTAMP[]), unnest(?::DOUBLE[]), unnest(?::INTEGER[]),
                   unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[])
            """,
            [
                [o.webhook_id for o in made],
                [o.event_id for o in made],
                [o.attempt for o in made],
                [o.attempted_at for o in made],
                [o.duration_ms for o in made],
                [o.status_code for o in made],
                [o.error for o in made],
                [o.response_excerpt for o in made],
                [o.outcome for o in made],
            ],
        )
    gone = list({o.webhook_id for o in outcomes if o.deactivate_webhook})
    if gone:
        con.execute(
            "UPDATE webhooks SET active = false, updated_at = ?, "
            "disabled_reason = 'the endpoint answered 410 Gone' "
            "WHERE active AND list_contains(?::VARCHAR[], webhook_id)",
            [now, gone],
        )
    retried = [o.webhook_id for o in outcomes if o.status is Status.PENDING] + gone
    if retried:
        _park_inactive(con, retried, now)
    # A fifo head that finished lets the next row through; a retry keeps its place.
    _settle_fifo(con, [o.webhook_id for o in outcomes], now)
    return [None] * len(outcomes)


def _release(con: Any, payloads: Sequence[list[tuple[str, str]]]) -> list[int]:
    now = utcnow()
    results = []
    for keys in payloads:
        if not keys:
            results.append(0)
            continue
        rows = con.execute(
            f"""
            UPDATE {Q} AS q SET status = '{Status.PENDING}', lease_until = NULL,
                next_attempt_at = ?, updated_at = ?
            FROM (SELECT unnest(?::VARCHAR[]) AS webhook_id, unnest(?::VARCHAR[]) AS event_id) k
            WHERE q.webhook_id = k.webhook_id AND q.event_id = k.event_id
              AND q.status IN {_in(sources(Event.RELEASE))}
            RETURNING q.webhook_id
            """,
            [now, now, [k[0] for k in keys], [k[1] for k in keys]],
        ).fetchall()
        _park_inactive(con, [r[0] for r in rows], now)
        _settle_fifo(con, [r[0] for r in rows], now)
        results.append(len(rows))
    return results


def _new_webhook_id() -> str:
    return "wh_" + os.urandom(12).hex()


def _fetch_webhook(con: Any, webhook_id: str, now: datetime) -> dict[str, Any] | None:
    row = con.execute(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = ?", [webhook_id]
    ).fetchone()
    return None if row is None else webhook_row(row, now)


def _create_webhook(
    con: Any, payloads: Sequence[tuple[str, list[str], str, str, WebhookLimits]]
) -> list[dict[str, Any]]:
    results = []
    now = utcnow()
    for url, event_types, secret, description, limits in payloads:
        webhook_id = _new_webhook_id()
        con.execute(
            """
            INSERT INTO webhooks (webhook_id, url, secret, event_types, active, description,
                                  created_at, updated_at, health_reset_at,
                                  rate_limit, max_in_flight, ordering)
            VALUES (?, ?, ?, ?, true, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                webhook_id,
                url,
                secret,
                event_types,
                description,
                now,
                now,
                now,
                limits.rate_limit,
                limits.max_in_flight,
                str(limits.ordering),
            ],
        )
        created = _fetch_webhook(con, webhook_id, now)
        assert created is not None
        results.append(created)
    return results


def _get_webhook(con: Any, webhook_id: str) -> dict[str, Any]:
    found = _fetch_webhook(con, webhook_id, utcnow())
    if found is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    return found


def _webhook_secrets(con: Any, webhook_id: str) -> tuple[str, tuple[str, ...]]:
    row = con.execute(
        "SELECT url, secret, previous_secret, previous_secret_expires_at FROM webhooks "
        "WHERE webhook_id = ?",
        [webhook_id],
    ).fetchone()
    if row is None:
        raise NotFound(f"no webhook {webhook_id!r}")
    url, secret, prev, prev_exp = row
    return url, signing_secrets(secret, prev, prev_exp, utcnow())


def _list_webhooks(con: Any, limit: int, after: str | None) -> Page:
    now = utcnow()
    rows = con.execute(
        f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id > ? ORDER BY webhook_id LIMIT ?",
        [after or "", limit + 1],
    ).fetchall()
    items = [webhook_row(r, now) for r in rows[:limit]]
    return Page(items, items[-1]["webhook_id"] if len(rows) > limit else None)


def _update_webhook(
    con: Any, payloads: Sequence[tuple[str, WebhookPatch]]
) -> list[dict[str, Any] | NotFound]:
    results: list[dict[str, Any] | NotFound] = []
    for webhook_id, patch in payloads:
        now = utcnow()
        row = con.execute(
            "SELECT active, webhook_id, ordering, max_in_flight, rate_limit, "
            "rate_tokens, rate_refilled_at, rate_next_at FROM webhooks WHERE webhook_id = ?",
            [webhook_id],
        ).fetchone()
        if row is None:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        was_active = bool(row[0])
        pace = Pace(*row[1:])
        sets: list[str] = ["updated_at = ?"]
        params: list[Any] = [now]
        new_rate = patch.rate_limit
        rate_changed = False
        if not isinstance(new_rate, Unset) and new_rate != pace.rate_limit:
            # The bucket keeps what it holds, within the new burst; the slots the old limit
            # gave out are void: its waiting rows are due now, and paced again.
            rate_changed = True
            held_tokens = None
            if new_rate is not None and pace.rate_limit is not None:
                held_tokens = min(burst(new_rate), tokens_now(pace, now))
            sets.append("rate_limit = ?, rate_tokens = ?, rate_refilled_at = ?")
            params.extend([new_rate, held_tokens, now])
        if rate_changed or (patch.active is not None and patch.active != was_active):
            sets.append("rate_next_at = NULL")
        if patch.max_in_flight is not UNSET:
            sets.append("max_in_flight = ?")
            params.append(patch.max_in_flight)
        ordering_changed = patch.ordering is not None and patch.ordering != pace.ordering
        if ordering_changed:
            sets.append("ordering = ?")
            params.append(str(patch.ordering))
        if patch.url is not None:
            sets.append("url = ?")
            params.append(patch.url)
        if patch.event_types is not None:
            sets.append("event_types = ?")
            params.append(patch.event_types)
        if patch.description is not None:
            sets.append("description = ?")
            params.append(patch.description)
        if patch.active is not None:
            sets.append("active = ?")
            params.append(patch.active)
            if patch.active and not was_active:
                sets.append("disabled_reason = NULL, failing_since = NULL, health_reset_at = ?")
                params.append(now)
            elif not patch.active and was_active:
                sets.append("disabled_reason = 'disabled by an operator'")
        con.execute(
            f"UPDATE webhooks SET {', '.join(sets)} WHERE webhook_id = ?", [*params, webhook_id]
        )
        if rate_changed:
            con.execute(
                f"UPDATE {Q} SET next_attempt_at = ?, updated_at = ? "
                f"WHERE webhook_id = ? AND status = '{Status.PENDING}' "
                "AND next_attempt_at > ? AND last_error = ?",
                [now, now, webhook_id, now, RATE_LIMITED],
            )
        if ordering_changed and patch.ordering == Ordering.NONE:
            # Rows that waited behind the head: due now, in any order.
            con.execute(
                f"UPDATE {Q} SET next_attempt_at = ?, updated_at = ? "
                f"WHERE webhook_id = ? AND status = '{Status.PENDING}' "
                "AND next_attempt_at IS NULL",
                [now, now, webhook_id],
            )
        if patch.active is True and not was_active:
            _set_due(con, Event.ENABLE, "webhook_id = ?", [webhook_id], now)
        elif patch.active is False:
            _park_inactive(con, [webhook_id], now)
        # Switched to fifo: its pending rows wait behind the oldest, which keeps its time.
        _settle_fifo(con, [webhook_id], now)
        updated = _fetch_webhook(con, webhook_id, now)
        assert updated is not None
        results.append(updated)
    return results


def _delete_webhook(con: Any, payloads: Sequence[str]) -> list[NotFound | None]:
    results: list[NotFound | None] = []
    now = utcnow()
    for webhook_id in payloads:
        rows = con.execute(
            "DELETE FROM webhooks WHERE webhook_id = ? RETURNING 1", [webhook_id]
        ).fetchall()
        if not rows:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        # Its deliveries stay, parked, for the record: nothing is silently dropped.
        _park_inactive(con, [webhook_id], now)
        results.append(None)
    return results


def _rotate_secret(
    con: Any, payloads: Sequence[tuple[str, str, float]]
) -> list[dict[str, Any] | NotFound]:
    results: list[dict[str, Any] | NotFound] = []
    for webhook_id, secret, grace in payloads:
        now = utcnow()
        rows = con.execute(
            """
            UPDATE webhooks SET previous_secret = secret, secret = ?,
                previous_secret_expires_at = ?, updated_at = ?
            WHERE webhook_id = ? RETURNING 1
            """,
            [secret, now + timedelta(seconds=grace), now, webhook_id],
        ).fetchall()
        if not rows:
            results.append(NotFound(f"no webhook {webhook_id!r}"))
            continue
        updated = _fetch_webhook(con, webhook_id, now)
        assert updated is not None
        results.append(updated)
    return results


def _list_deliveries(con: Any, filt: DeliveryFilter, limit: int, after: str | None) -> Page:
    where = ["true"]
    params: list[Any] = []
    if filt.webhook_id is not None:
        where.append("webhook_id = ?")
        params.append(filt.webhook_id)
    if filt.event_id is not None:
        where.append("event_id = ?")
        params.append(filt.event_id)
    if filt.status is not None:
        where.append("status = ?")
        params.append(str(filt.status))
    if after:
        created, wid, eid = parse_delivery_cursor(after)
        where.append("(created_at, webhook_id, event_id) < (?::TIMESTAMP, ?, ?)")
        params.extend([created, wid, eid])
    rows = con.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM {Q} WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, webhook_id DESC, event_id DESC LIMIT ?",
        [*params, limit + 1],
    ).fetchall()
    items = [delivery_row(r) for r in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = delivery_cursor(last[9], last[0], last[1])
    return Page(items, cursor)


def _list_attempts(con: Any, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
    rows = con.execute(
        f"SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries "
        "WHERE webhook_id = ? AND event_id = ? ORDER BY attempt_id",
        [webhook_id, event_id],
    ).fetchall()
    items = [attempt_row(row) for row in rows]
    if not items:
        exists = con.execute(
            f"SELECT 1 FROM {Q} WHERE webhook_id = ? AND event_id = ?", [webhook_id, event_id]
        ).fetchone()
        if exists is None:
            raise NotFound(f"no delivery of {event_id!r} to {webhook_id!r}")
    return items


def _set_due(con: Any, event: Event, where: str, params: list[Any], now: datetime) -> int:
    """Apply an operator event (enable, redrive, replay): matching rows due now, fresh budget."""
    rows = con.execute(
        f"""
        UPDATE {Q} SET status = '{Status.PENDING}', next_attempt_at = ?, lease_until = NULL,
            retry_base = attempts, updated_at = ?
        WHERE status IN {_in(sources(event))} AND {where}
        RETURNING webhook_id
        """,
        [now, now, *params],
    ).fetchall()
    reparked = _park_inactive(con, [r[0] for r in rows], now)
    # A fifo webhook's rows due again take their places by seq behind one head.
    _settle_fifo(con, [r[0] for r in rows], now)
    return len(rows) - reparked


def _redrive(con: Any, payloads: Sequence[tuple[Status, str | None, datetime | None]]) -> list[int]:
    results = []
    for status, webhook_id, since in payloads:
        where = ["status = ?"]
        params: list[Any] = [str(status)]
        if webhook_id is not None:
            where.append("webhook_id = ?")
            params.append(webhook_id)
        if since is not None:
            where.append("last_attempt_at >= ?")
            params.append(since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since)
        results.append(_set_due(con, Event.REDRIVE, " AND ".join(where), params, utcnow()))
    return results


def _replay(con: Any, payloads: Sequence[tuple[str, str | None]]) -> list[int | NotFound]:
    results: list[int | NotFound] = []
    for event_id, webhook_id in payloads:
        now = utcnow()
        event = con.execute(
            "SELECT event_type, seq FROM pipeline_events WHERE event_id = ?", [event_id]
        ).fetchone()
        if event is None:
            results.append(NotFound(f"no event {event_id!r}"))
            continue
        # An event the scanner has not reached yet: scan up to it first, so that the rows
        # inserted below are never the scanner's to insert again.
        scanned = _scan_once(con, 10_000, careful=True, upto=event[1])
        forced = scanned.events > 0
        while scanned.cursor < event[1]:
            scanned = _scan_once(con, 10_000, careful=True, upto=event[1])
        if webhook_id is not None:
            hook = con.execute(
                "SELECT 1 FROM webhooks WHERE webhook_id = ?", [webhook_id]
            ).fetchone()
            if hook is None:
                results.append(NotFound(f"no webhook {webhook_id!r}"))
                continue
            match, params = "w.webhook_id = ?", [webhook_id]
        else:
            match = MATCHES
            params = []
        where, where_params = "event_id = ?", [event_id]
        if webhook_id is not None:
            where += " AND webhook_id = ?"
            where_params.append(webhook_id)
        # The rows that scan enqueued are due now, as a replay would make them: they count.
        fresh = (
            con.execute(
                f"SELECT count(*) FROM {Q} WHERE {where} AND status = '{Status.PENDING}'",
                where_params,
            ).fetchone()[0]
            if forced
            else 0
        )
        # Rows pruned after delivery come back from the event source.
        inserted = con.execute(
            f"""
            INSERT INTO {Q} (webhook_id, event_id, status, attempts, retry_base,
                             next_attempt_at, body, created_at, updated_at, seq)
            SELECT w.webhook_id, e.event_id, '{Status.PENDING}', 0, 0, ?, e.body, ?, ?, e.seq
            FROM pipeline_events e JOIN webhooks w ON {match}
            WHERE e.event_id = ?
            ON CONFLICT DO NOTHING
            RETURNING webhook_id
            """,
            [now, now, now, *params, event_id],
        ).fetchall()
        again = _set_due(con, Event.REPLAY, where, where_params, now)
        reparked = _park_inactive(con, [r[0] for r in inserted], now)
        _settle_fifo(con, [r[0] for r in inserted], now)
        results.append(fresh + again + len(inserted) - reparked)
    return results


def _status(con: Any) -> StatusReport:
    now = utcnow()
    report = StatusReport()
    for wid, status, n in con.execute(
        f"SELECT webhook_id, status, count(*) FROM {Q} GROUP BY ALL"
    ).fetchall():
        report.by_status[status] = report.by_status.get(status, 0) + n
        report.by_webhook.setdefault(wid, {})[status] = n
    oldest = con.execute(
        f"SELECT min(next_attempt_at) FROM {Q} WHERE status = '{Status.PENDING}' "
        "AND next_attempt_at <= ?",
        [now],
    ).fetchone()[0]
    if oldest is not None:
        report.oldest_due_age_seconds = max(0.0, (now - oldest).total_seconds())
    cursor, latest = con.execute(
        "SELECT (SELECT seq FROM scanner_cursor WHERE name = 'main'), "
        "(SELECT coalesce(max(seq), 0) FROM pipeline_events)"
    ).fetchone()
    report.scanner_cursor = cursor
    report.latest_seq = max(latest, cursor)
    report.scanner_lag_events = max(0, latest - cursor)
    for wid, active, reason in con.execute(
        "SELECT webhook_id, active, disabled_reason FROM webhooks ORDER BY webhook_id"
    ).fetchall():
        if active:
            report.webhooks_active += 1
        else:
            report.disabled_webhooks[wid] = reason
    report.fifo_blocked = _fifo_blocked(con)
    return report


def _fifo_blocked(con: Any) -> dict[str, FifoBlocked]:
    """Fifo webhooks whose head (the lowest seq of their pending and inflight rows) has
    failed since it became the head or was last redriven, with the first such failure."""
    fifo = _fifo_ids(con)
    if not fifo:
        return {}
    blocked: dict[str, FifoBlocked] = {}
    for wid, eid, attempts, base, last in con.execute(
        f"""
        SELECT q.webhook_id, q.event_id, q.attempts, q.retry_base, q.last_attempt_at
        FROM {Q} q
        JOIN (SELECT webhook_id, min(seq) AS head FROM {Q}
              WHERE status IN ('{Status.PENDING}', '{Status.INFLIGHT}')
                AND list_contains(?::VARCHAR[], webhook_id)
              GROUP BY webhook_id) h ON q.webhook_id = h.webhook_id AND q.seq = h.head
        WHERE q.status IN ('{Status.PENDING}', '{Status.INFLIGHT}') AND q.attempts > q.retry_base
        ORDER BY q.webhook_id
        """,
        [fifo],
    ).fetchall():
        (first,) = con.execute(
            "SELECT min(attempted_at) FROM webhook_deliveries "
            "WHERE webhook_id = ? AND event_id = ? AND attempt > ?",
            [wid, eid, base],
        ).fetchone()
        since = first or last
        if since is not None:
            blocked[wid] = FifoBlocked(eid, since, attempts)
    return blocked


def _prune(con: Any, payloads: Sequence[tuple[datetime, datetime, int]]) -> list[Pruned]:
    results = []
    for delivered_before, log_before, batch in payloads:
        queue_rows = con.execute(
            f"""
            DELETE FROM {Q} WHERE rowid IN (
                SELECT rowid FROM {Q} WHERE status = '{Status.DELIVERED}' AND updated_at < ?
                LIMIT ?)
            RETURNING 1
            """,
            [delivered_before, batch],
        ).fetchall()
        log_rows = con.execute(
            """
            DELETE FROM webhook_deliveries WHERE rowid IN (
                SELECT rowid FROM webhook_deliveries WHERE attempted_at < ? LIMIT ?)
            RETURNING 1
            """,
            [log_before, batch],
        ).fetchall()
        results.append(Pruned(len(queue_rows), len(log_rows)))
    return results


def _auto_disable(con: Any, payloads: Sequence[datetime]) -> list[list[str]]:
    """Refresh failing_since from the log, then deactivate webhooks failing for too long.

    A webhook fails since its first attempt after its last delivered one (or after it was
    created or last enabled). Computed here, once a tick, so that recording outcomes on
    the hot path never touches the webhooks table.
    """
    results = []
    for failing_before in payloads:
        now = utcnow()
        con.execute(
            """
            UPDATE webhooks AS w SET failing_since = f.since
            FROM (
                SELECT w.webhook_id,
                       (SELECT min(l.attempted_at) FROM webhook_deliveries l
                        WHERE l.webhook_id = w.webhook_id
                          AND l.attempted_at >= coalesce(w.health_reset_at, w.created_at)
                          AND l.attempted_at > coalesce(
                              (SELECT max(ok.attempted_at) FROM webhook_deliveries ok
                               WHERE ok.webhook_id = w.webhook_id
                                 AND ok.outcome = 'delivered'),
                              '-infinity'::TIMESTAMP)) AS since
                FROM webhooks w WHERE w.active
            ) f
            WHERE w.webhook_id = f.webhook_id
              AND w.failing_since IS DISTINCT FROM f.since
            """
        )
        rows = con.execute(
            """
            UPDATE webhooks SET active = false, updated_at = ?,
                disabled_reason = 'every attempt failed since '
                    || strftime(failing_since, '%Y-%m-%dT%H:%M:%SZ')
            WHERE active AND failing_since IS NOT NULL AND failing_since < ?
            RETURNING webhook_id
            """,
            [now, failing_before],
        ).fetchall()
        disabled = [r[0] for r in rows]
        _park_inactive(con, disabled, now)
        results.append(disabled)
    return results


# What a poll or a chore answers when its transaction could not commit for want of room
# (DuckDBStore._write; a scan answers ScanResult(0, 0, cursor)): nothing done now.
_NOTHING_DONE: dict[Any, Callable[[], Any]] = {
    _scan: list,
    _scan_carefully: list,
    _claim: list,
    _rescue: int,
    _release: int,
    _auto_disable: list,
    _prune: lambda: Pruned(0, 0),
}
