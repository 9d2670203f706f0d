"""The daemon's side of a store that runs in a child process (see server.py).

Why a process: DuckDB's Python client takes the GIL to bind every parameter and to
convert every result row. In the same process as a busy event loop, the writer thread
waited for the GIL on every statement: measured, a transaction took 3 to 5 times its CPU
time, and the delivery rate was capped by that wait, not by the database. In its own
process the writer has a GIL, and a core, to itself.

Calls are pickled, many to a frame: everything asked during one turn of the event loop
goes out as one write, and the child answers in frames of the same kind. The child dies
with the daemon (SIGKILL on the daemon's death), which is no worse than the whole daemon
being killed: every outcome is durable only once the child's writer has committed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from webhookd import logs
from webhookd.events import NewEvent
from webhookd.states import Status
from webhookd.store.base import (
    Claim,
    ClaimRequest,
    DeliveryFilter,
    DeliveryKey,
    DeliveryPage,
    IngestResult,
    Outcome,
    Page,
    Pruned,
    ScanResult,
    StatusReport,
    StoreUnavailable,
    WebhookLimits,
    WebhookPatch,
)
from webhookd.store.records import WebhookRecord, WebhookSecrets
from webhookd.tenants import StoredToken

log = logs.get("webhookd.store")

HEADER = 4
# A call unanswered for this long means the child's writer is stuck: the watchdog's cue
# (the default of `database.stall_timeout`).
STALL_SECONDS = 60.0
# How long an outcome may wait for others to share its frame to the database process.
LINGER = 0.002
# How long a scan or claim asked after new work arrived may wait to share a transaction.
WOKEN_RIDE = 0.002
# This very interpreter, on Linux (see open()).
SELF_EXE = "/proc/self/exe" if os.path.exists("/proc/self/exe") else None


def frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER, "big") + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(HEADER), "big")
    return pickle.loads(await reader.readexactly(size))


class Outbox:
    """Messages queued during one turn of the loop, written as one frame.

    Pickling and writing cost about 13 us a frame and 0.3 us a message, so outcomes,
    which nobody waits for, linger a moment to share a frame; any other message goes
    out at the end of the turn, with every outcome queued before it.
    """

    def __init__(self, writer: asyncio.StreamWriter, wrap: Any = None) -> None:
        self._writer = writer
        self._wrap = wrap
        self._messages: list[Any] = []
        self._soon = False
        self._later: asyncio.TimerHandle | None = None

    def put(self, message: Any, *, urgent: bool = True) -> None:
        self._messages.append(message)
        if urgent:
            if not self._soon:
                self._soon = True
                asyncio.get_running_loop().call_soon(self.flush)
        elif self._later is None and not self._soon:
            self._later = asyncio.get_running_loop().call_later(LINGER, self.flush)

    def flush(self) -> None:
        self._soon = False
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if not self._messages or self._writer.is_closing():
            self._messages = []
            return
        messages, self._messages = self._messages, []
        body = messages if self._wrap is None else self._wrap(messages)
        self._writer.write(frame(body))


class RemoteStore:
    """A Store whose DuckDB connection lives in a child process."""

    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str = "128MB",
        checkpoint_interval: float = 30.0,
        log_format: str = "json",
        log_level: str = "info",
        poll_interval: float = 0.25,
        stall_timeout: float = STALL_SECONDS,
    ) -> None:
        self.path = Path(path)
        self._options = {
            "path": str(self.path),
            "memory_limit": memory_limit,
            "checkpoint_interval": checkpoint_interval,
            "log_format": log_format,
            "log_level": log_level,
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._outbox: Outbox | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self._next_id = 0
        self._stats = (0, 0)
        self._writable = True  # False while the database's disk is full (see available)
        self._closing = False
        self._poll_interval = poll_interval
        self._stall_timeout = stall_timeout
        # Pacing (see scan and claim): whether something happened since the last scan or
        # claim that they should not wait a whole poll interval to see.
        self._scan_due = True
        self._claim_due = True
        self._claims_waiting = 0
        self._scans_waiting = 0
        self.engine = "duckdb"
        self.lost = asyncio.Event()
        self.migrations_applied: list[int] = []

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            # Popen on this thread, not an executor's: the child's death signal is tied
            # to the thread that forks it. /proc/self/exe is this very interpreter even
            # where the path in sys.executable runs through a directory this user cannot
            # search (a venv made by root, run as `nobody`); argv[0] still names the venv.
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - once per start, a few ms
                [
                    sys.executable,
                    "-m",
                    "webhookd.store.duckdb.server",
                    str(theirs.fileno()),
                    str(os.getpid()),
                    *(f"{k}={v}" for k, v in self._options.items()),
                ],
                executable=SELF_EXE,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            raise StoreUnavailable(f"cannot start the database process: {exc}") from None
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._outbox = Outbox(self._writer)
        self._reading = asyncio.create_task(self._read(reader), name="store-replies")
        try:
            self.migrations_applied = await self._call("open")
        except BaseException:
            await self._shut(graceful=False)
            raise

    async def close(self) -> None:
        if self._proc is None:
            return
        self._closing = True
        with contextlib.suppress(StoreUnavailable):
            await self._call("close")
        await self._shut(graceful=True)

    async def _shut(self, *, graceful: bool) -> None:
        self._closing = True
        proc, self._proc = self._proc, None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        if self._reading is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        if proc is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, proc.wait, 60.0 if graceful else 5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                await loop.run_in_executor(None, proc.wait)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                stats, replies = await read_frame(reader)
                self._stats, self._writable = stats[:2], stats[2]
                for call_id, ok, value in replies:
                    entry = self._pending.pop(call_id, None)
                    if entry is None or entry[0].done():
                        continue
                    if ok:
                        entry[0].set_result(value)
                    else:
                        entry[0].set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            gone = StoreUnavailable("the database process has exited")
            for future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(gone)
            self._pending.clear()
            if not self._closing:
                code = self._proc.poll() if self._proc is not None else None
                log.error("the database process exited unexpectedly", exit_code=code)
                self.lost.set()

    def _submit(self, name: str, *args: Any, urgent: bool = True) -> asyncio.Future[Any]:
        if self._outbox is None or self.lost.is_set() or self._reading is None:
            raise StoreUnavailable("the database is closed")
        if self._reading.done():
            raise StoreUnavailable("the database process has exited")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._next_id += 1
        self._pending[self._next_id] = (future, time.monotonic())
        self._outbox.put((self._next_id, name, args), urgent=urgent)
        return future

    async def _call(self, name: str, *args: Any) -> Any:
        return await self._submit(name, *args)

    def healthy(self) -> bool:
        if self._proc is None or self._proc.poll() is not None or self.lost.is_set():
            return False
        oldest = next(iter(self._pending.values()), None)
        return oldest is None or time.monotonic() - oldest[1] < self._stall_timeout

    def stats(self) -> dict[str, int]:
        transactions, operations = self._stats
        return {"transactions": transactions, "operations": operations}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- start-up (as an Owner: the rescue) and upkeep ------------------------------

    async def rescue_orphans(self) -> int:
        return int(await self._call("rescue_orphans"))

    async def rescue_expired(self, now: datetime) -> int:
        return int(await self._call("rescue_expired", now))

    async def prune(self, delivered_before: datetime, log_before: datetime, batch: int) -> Pruned:
        result: Pruned = await self._call("prune", delivered_before, log_before, batch)
        return result

    async def auto_disable(
        self, failing_before: datetime, reported_failing_before: datetime | None = None
    ) -> list[str]:
        result: list[str] = await self._call(
            "auto_disable", failing_before, reported_failing_before
        )
        return result

    # -- the data path ---------------------------------------------------------------

    async def ingest(self, events: list[NewEvent]) -> IngestResult:
        # The ingest writer commits the events on its own (the 202 waits for that commit
        # only), then kicks the main writer: a scan and a claim waiting there board a
        # transaction at once, so the events are enqueued and claimed by the next commit.
        # Scans and claims asked meanwhile wait only briefly for that kick, unless one of
        # each waits already: the kick takes those, and one asked again after it would
        # wait briefly for nothing and then run alone (0.7 of a transaction an event at
        # 100 events/s once scans claimed their rows).
        if not self._scans_waiting:
            self._scan_due = True
        if not self._claims_waiting:
            self._claim_due = True
        result: IngestResult = await self._call("ingest", events)
        return result

    async def scan(self, batch_size: int, claim: ClaimRequest | None = None) -> ScanResult:
        """A scan waits in the writer for the next ingest's kick (a poll that finds nothing
        then costs no commit of its own; see DuckDBStore.ingest), up to the poll interval,
        or only briefly when events were ingested since the last scan.

        A claim of the pool's waiting in the writer boards the transaction the scan does
        and claims after it: then the scan claims only the rows it enqueues claimed
        (batches.enqueue_claimed, which costs less than the claim that then finds nothing
        due), not as a claim does, which would only run the claim's statements twice in
        one transaction. Otherwise it claims as asked. Its claims come back with its
        answer."""
        ride = WOKEN_RIDE if self._scan_due else self._poll_interval
        self._scan_due = False
        self._scans_waiting += 1
        try:
            result: ScanResult = await self._call(
                "scan", batch_size, claim, ride, self._claims_waiting > 0
            )
        finally:
            self._scans_waiting -= 1
        if result.events >= batch_size:
            # A full batch: more events wait behind it. Without new ingests nothing would
            # kick the next scan, which would wait a whole poll interval per batch.
            self._scan_due = True
        if result.enqueued and result.left_due:
            self._claim_due = True
        return result

    async def claim(
        self,
        limit: int,
        per_webhook: int,
        lease: float,
        caps: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        """A claim waits in the writer to share the next transaction, as a scan does: with
        the scan of new events an ingest's kick starts, which it then claims in the same
        commit, or with outcomes. A claim asked while another waits rides only with new
        events: under a backlog, where no events come in, it costs nothing, and the
        writer, which boards one claim per transaction, has one left for the next."""
        ride = WOKEN_RIDE if self._claim_due else self._poll_interval
        self._claim_due = False
        with_new_events = self._claims_waiting > 0
        self._claims_waiting += 1
        try:
            result: list[Claim] = await self._call(
                "claim", limit, per_webhook, lease, dict(caps or {}), ride, with_new_events
            )
        finally:
            self._claims_waiting -= 1
        return result

    def available(self) -> bool:
        """Open and writable: False while the database's disk is full (every frame from
        the database process says which), or the process is gone."""
        return self._proc is not None and not self.lost.is_set() and self._writable

    def record(self, outcome: Outcome) -> asyncio.Future[bool]:
        written: asyncio.Future[bool] = self._submit("record", outcome, urgent=False)
        written.add_done_callback(self._recorded)
        return written

    def _recorded(self, written: asyncio.Future[bool]) -> None:
        # A slot is free, and rows may wait for it: the next claim need not wait long.
        if not written.cancelled() and written.exception() is None and written.result():
            self._claim_due = True

    async def release(self, keys: list[tuple[str, str]]) -> int:
        self._claim_due = True
        return int(await self._call("release", keys))

    # -- webhooks ----------------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        event_types: list[str],
        secret: str,
        description: str,
        limits: WebhookLimits | None = None,
        tenant: str | None = None,
    ) -> WebhookRecord:
        result: WebhookRecord = await self._call(
            "create_webhook", url, event_types, secret, description, limits, tenant
        )
        return result

    async def get_webhook(self, webhook_id: str) -> WebhookRecord:
        result: WebhookRecord = await self._call("get_webhook", webhook_id)
        return result

    async def get_webhook_secrets(self, webhook_id: str) -> WebhookSecrets:
        result: WebhookSecrets = await self._call("get_webhook_secrets", webhook_id)
        return result

    async def list_webhooks(self, limit: int, after: str | None, tenant: str | None = None) -> Page:
        result: Page = await self._call("list_webhooks", limit, after, tenant)
        return result

    async def update_webhook(self, webhook_id: str, patch: WebhookPatch) -> WebhookRecord:
        result: WebhookRecord = await self._call("update_webhook", webhook_id, patch)
        self._claim_due = True  # enabling re-drives parked rows
        return result

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._call("delete_webhook", webhook_id)

    async def rotate_secret(self, webhook_id: str, secret: str, grace: float) -> WebhookRecord:
        result: WebhookRecord = await self._call("rotate_secret", webhook_id, secret, grace)
        return result

    # -- operators ---------------------------------------------------------------------

    async def list_deliveries(
        self, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
    ) -> DeliveryPage:
        result: DeliveryPage = await self._call("list_deliveries", filt, limit, after)
        return result

    async def list_attempts(self, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("list_attempts", webhook_id, event_id)
        return result

    async def redrive(
        self,
        status: Status,
        webhook_id: str | None,
        since: datetime | None,
        tenant: str | None = None,
    ) -> int:
        count = int(await self._call("redrive", status, webhook_id, since, tenant))
        self._claim_due = True
        return count

    async def replay(self, event_id: str, webhook_id: str | None, tenant: str | None = None) -> int:
        count = int(await self._call("replay", event_id, webhook_id, tenant))
        self._claim_due = True
        return count

    async def status(self, tenant: str | None = None) -> StatusReport:
        result: StatusReport = await self._call("status", tenant)
        return result

    # -- tenant tokens -----------------------------------------------------------------

    async def create_tenant_token(self, token: StoredToken) -> None:
        await self._call("create_tenant_token", token)

    async def list_tenant_tokens(self, tenant: str) -> list[StoredToken]:
        result: list[StoredToken] = await self._call("list_tenant_tokens", tenant)
        return result

    async def revoke_tenant_token(self, tenant: str, token_id: str) -> None:
        await self._call("revoke_tenant_token", tenant, token_id)

    async def find_tenant_token(self, token_id: str) -> StoredToken | None:
        result: StoredToken | None = await self._call("find_tenant_token", token_id)
        return result
