"""The DuckDB implementation of the Store: two writer threads, one reader thread.

Its batch functions live in batches.py (the delivery path) and admin.py (webhooks and
operators); disk.py handles a full disk, migrate.py opens the file.

DuckDB allows one process to hold the file read-write, so at start-up every row left
inflight belongs to a process that is gone. Writes go through writer.Writer
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
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from webhookd import logs
from webhookd.events import NewEvent
from webhookd.states import Status
from webhookd.store.base import (
    Claim,
    ClaimRequest,
    DeliveryFilter,
    DeliveryKey,
    DeliveryPage,
    EventConflict,
    IngestResult,
    NotFound,
    Outcome,
    Page,
    Pruned,
    ScanResult,
    StatusReport,
    StoreUnavailable,
    WebhookLimits,
    WebhookPatch,
)
from webhookd.store.duckdb import admin, batches, tenant_tokens
from webhookd.store.duckdb.common import Cursor, scanned_seq
from webhookd.store.duckdb.disk import FULL_PAUSE, HOLD_OUTCOME, REOPEN_EVERY, RETRY_OUTCOME, Disk
from webhookd.store.duckdb.fresh import FreshEvents
from webhookd.store.duckdb.migrate import migrate, open_connection
from webhookd.store.duckdb.queries import query
from webhookd.store.duckdb.writer import Writer
from webhookd.store.records import WebhookRecord, WebhookSecrets, utcnow
from webhookd.tenants import StoredToken

log = logs.get("webhookd.store")


# A WAL this large is checkpointed even under load (see _idle).
WAL_CHECKPOINT_BYTES = 32 * 1024 * 1024
# Order inside one transaction of the main writer: outcomes free per-webhook slots, the
# scan enqueues the events committed before it began, and a claim then sees all of it, so
# that an event can be enqueued and claimed by the one commit after its ingest's.
PRIORITY_OUTCOME = 0
PRIORITY_DEFAULT = 1
PRIORITY_SCAN = 2
PRIORITY_CLAIM = 3


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
            if isinstance(exc, StoreUnavailable) and op.fn is batches.record and not self._closed:
                since = self._held_since.setdefault(id(op), now)
                if now - since < HOLD_OUTCOME:
                    op.ride_until = now + RETRY_OUTCOME
                    self._riders.append(op)
                    continue
            self._held_since.pop(id(op), None)
            told.append(item)
        super()._resolve(told)


def _probe(con: Any) -> None:
    """A write of one value, so that Disk.committed sees whether there is room again with
    no other writes coming: scanner_cursor.updated_at (which nothing reads) set to now."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(query("disk_probe"), [utcnow()])
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
        memory_limit: str = "128MB",
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
        self._disk = Disk(self.path, self._broken)
        self._cursors: list[Cursor] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._checkpoint_postponed = False
        self._reader_con: Cursor | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="webhookd-reader")
        self._last_checkpoint = time.monotonic()
        self.migrations_applied: list[int] = []

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="webhookd-reader")
        loop = asyncio.get_running_loop()
        self._con = await loop.run_in_executor(
            self._reader, open_connection, self.path, self._memory_limit
        )
        self.migrations_applied = await loop.run_in_executor(self._reader, migrate, self._con)
        self._loop = loop
        self._cursors = [Cursor(self._con.cursor(), self._disk, remembers=i == 1) for i in range(3)]
        self._reader_con = self._cursors[0]
        fresh = self._cursors[1].fresh = FreshEvents()
        ingests = self._cursors[2]
        writer = _MainWriter(
            self._cursors[1], idle=self._idle, idle_every=1.0, gate=self._main_gate
        )
        self._writer = writer

        def committed() -> None:
            # The events first, then the kick that makes the main writer scan them.
            fresh.add(ingests.take_notes())
            writer.kick(batches.new_events_kick)

        self._ingest_writer = Writer(
            ingests, name="webhookd-ingest", on_commit=committed, gate=self._gate
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
                con = open_connection(self.path, self._memory_limit)
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
        # Bound the WAL (replay time at start-up) even when the writer is never idle, and
        # the memory behind it: until a CHECKPOINT, DuckDB keeps what was written since the
        # last one in memory, outside memory_limit (measured: the database process grew by
        # about 90 MB between the busy checkpoints 120 s apart of a steady stream).
        if (
            (not busy and since >= self._checkpoint_interval)
            or since >= 4 * self._checkpoint_interval
            or self._disk.wal_size() >= WAL_CHECKPOINT_BYTES
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
        if fn is batches.scan or fn is batches.scan_carefully:
            try:
                cursor = await self._read(scanned_seq)
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

    # -- start-up (as an Owner: the rescue) and upkeep ------------------------------

    async def rescue_orphans(self) -> int:
        return int(await self._write(batches.rescue, None))

    async def rescue_expired(self, now: datetime) -> int:
        return int(await self._write(batches.rescue, now))

    async def prune(self, delivered_before: datetime, log_before: datetime, batch: int) -> Pruned:
        result: Pruned = await self._write(batches.prune, (delivered_before, log_before, batch))
        return result

    async def auto_disable(
        self, failing_before: datetime, reported_failing_before: datetime | None = None
    ) -> list[str]:
        result: list[str] = await self._write(
            admin.auto_disable, (failing_before, reported_failing_before)
        )
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
            result = await writer.submit(batches.ingest, events)
        except duckdb.ConstraintException:
            # An id already stored (a re-post, or a conflict): look the ids up this time.
            result = await writer.submit(batches.ingest_carefully, events)
        if isinstance(result, EventConflict):
            raise result
        assert isinstance(result, IngestResult)
        return result

    async def scan(
        self,
        batch_size: int,
        claim: ClaimRequest | None = None,
        ride: float = 0.0,
        direct_only: bool = False,
    ) -> ScanResult:
        """`ride` and `direct_only` (positional after `claim`: remote.py sends them as they
        are) let the scan wait in the writer for a transaction to board, and claim only
        what it enqueues claimed (see RemoteStore.scan)."""
        try:
            # Only ingests bring events to scan: a waiting scan boards the transaction that
            # the ingest writer's kick starts once they are committed.
            result: ScanResult = await self._write(
                batches.scan,
                (batch_size, claim, direct_only),
                PRIORITY_SCAN,
                ride,
                batches.NEW_EVENTS,
            )
        except duckdb.ConstraintException:
            # A row the scan would insert exists: should never happen (see batches.scan_once),
            # but must not stop the scanner for good.
            log.warning("scan met an existing queue row; scanning with ON CONFLICT")
            result = await self._write(
                batches.scan_carefully, (batch_size, claim, direct_only), PRIORITY_SCAN
            )
        return result

    async def claim(
        self,
        limit: int,
        per_webhook: int,
        lease: float,
        caps: Mapping[str, int] | None = None,
        ride: float = 0.0,
        with_new_events: bool = False,
    ) -> list[Claim]:
        """`ride` and `with_new_events` (positional: remote.py sends them as they are) let
        the call wait in the writer for a transaction to board (see RemoteStore.claim)."""
        result: list[Claim] = await self._write(
            batches.claim,
            (limit, per_webhook, lease, dict(caps or {})),
            PRIORITY_CLAIM,
            ride,
            batches.NEW_EVENTS if with_new_events else None,
        )
        return result

    def record(self, outcome: Outcome) -> asyncio.Future[bool]:
        if self._writer is None:
            raise StoreUnavailable("the database is closed")
        future: asyncio.Future[bool] = self._writer.submit(
            batches.record, outcome, priority=PRIORITY_OUTCOME
        )
        return future

    async def release(self, keys: list[tuple[str, str]]) -> int:
        return int(await self._write(batches.release, keys, PRIORITY_OUTCOME))

    # -- webhooks ---------------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        event_types: list[str],
        secret: str,
        description: str,
        limits: WebhookLimits | None = None,
        tenant: str | None = None,
    ) -> WebhookRecord:
        result: WebhookRecord = await self._write(
            admin.create_webhook,
            (url, event_types, secret, description, limits or WebhookLimits(), tenant),
        )
        return result

    async def get_webhook(self, webhook_id: str) -> WebhookRecord:
        result: WebhookRecord = await self._read(admin.get_webhook, webhook_id)
        return result

    async def get_webhook_secrets(self, webhook_id: str) -> WebhookSecrets:
        """(url, signing secrets, delivery options) for the test route only."""
        result: WebhookSecrets = await self._read(admin.get_webhook_secrets, webhook_id)
        return result

    async def list_webhooks(self, limit: int, after: str | None, tenant: str | None = None) -> Page:
        result: Page = await self._read(admin.list_webhooks, limit, after, tenant)
        return result

    async def update_webhook(self, webhook_id: str, patch: WebhookPatch) -> WebhookRecord:
        result = await self._write(admin.update_webhook, (webhook_id, patch))
        if isinstance(result, NotFound):
            raise result
        assert isinstance(result, WebhookRecord)
        return result

    async def delete_webhook(self, webhook_id: str) -> None:
        result = await self._write(admin.delete_webhook, webhook_id)
        if isinstance(result, NotFound):
            raise result

    async def rotate_secret(self, webhook_id: str, secret: str, grace: float) -> WebhookRecord:
        result = await self._write(admin.rotate_secret, (webhook_id, secret, grace))
        if isinstance(result, NotFound):
            raise result
        assert isinstance(result, WebhookRecord)
        return result

    # -- operators ------------------------------------------------------------------------

    async def list_deliveries(
        self, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
    ) -> DeliveryPage:
        result: DeliveryPage = await self._read(admin.list_deliveries, filt, limit, after)
        return result

    async def list_attempts(self, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._read(admin.list_attempts, webhook_id, event_id)
        return result

    async def redrive(
        self,
        status: Status,
        webhook_id: str | None,
        since: datetime | None,
        tenant: str | None = None,
    ) -> int:
        return int(await self._write(admin.redrive, (status, webhook_id, since, tenant)))

    async def replay(self, event_id: str, webhook_id: str | None, tenant: str | None = None) -> int:
        result = await self._write(admin.replay, (event_id, webhook_id, tenant))
        if isinstance(result, NotFound):
            raise result
        return int(result)

    async def status(self, tenant: str | None = None) -> StatusReport:
        result: StatusReport = await self._read(admin.status, tenant)
        return result

    # -- tenant tokens ----------------------------------------------------------------------

    async def create_tenant_token(self, token: StoredToken) -> None:
        await self._write(tenant_tokens.create, token)

    async def list_tenant_tokens(self, tenant: str) -> list[StoredToken]:
        result: list[StoredToken] = await self._read(tenant_tokens.list_for, tenant)
        return result

    async def revoke_tenant_token(self, tenant: str, token_id: str) -> None:
        result = await self._write(tenant_tokens.revoke, (tenant, token_id))
        if isinstance(result, NotFound):
            raise result

    async def find_tenant_token(self, token_id: str) -> StoredToken | None:
        result: StoredToken | None = await self._read(tenant_tokens.find, token_id)
        return result


# What a poll or a chore answers when its transaction could not commit for want of room
# (DuckDBStore._write; a scan answers ScanResult(0, 0, cursor)): nothing done now.
_NOTHING_DONE: dict[Any, Callable[[], Any]] = {
    batches.scan: list,
    batches.scan_carefully: list,
    batches.claim: list,
    batches.rescue: int,
    batches.release: int,
    admin.auto_disable: list,
    batches.prune: lambda: Pruned(0, 0),
}
