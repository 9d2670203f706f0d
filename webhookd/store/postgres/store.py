"""The PostgreSQL implementation of the Store: several daemons share one queue.

Thin methods that run the named queries of sql/postgresql/queries.sql on a pooled
asyncpg connection (the operators' and webhooks' operations live in admin.py); the
pieces with a job of their own live beside this file: migrate.py (migrations, advisory
lock keys), listen.py (LISTEN/NOTIFY), leader.py (upkeep election), outcomes.py (outcomes
in batches), scans.py and claims.py (the scan's and the claim's transactions), errors.py
(error translation).

Every call goes through `_call`, which turns a database that cannot be reached into
StoreUnavailable (the API answers 503) and keeps `available()` and `healthy()` current.
The pool reconnects by itself once PostgreSQL is back, so the store is never reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets as _random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from webhookd import logs
from webhookd.events import NewEvent
from webhookd.queue.conflicts import first_of_each, same_content
from webhookd.states import Status
from webhookd.store.base import (
    Channel,
    Claim,
    ClaimRequest,
    DeliveryFilter,
    DeliveryKey,
    DeliveryPage,
    EventConflict,
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
from webhookd.store.postgres import (
    admin,
    claims,
    fifo,
    operational,
    scans,
    statistics,
    tenant_tokens,
)
from webhookd.store.postgres.common import channel, db_now, park_inactive, stop_task
from webhookd.store.postgres.errors import (
    RETRYABLE,
    TIMED_OUT,
    is_unavailable,
    open_error,
    scrub,
    timed_out,
    unavailable,
)
from webhookd.store.postgres.ingests import IngestGroup
from webhookd.store.postgres.leader import Leader
from webhookd.store.postgres.listen import Listener
from webhookd.store.postgres.migrate import SCANNER, lock_key, migrate, quote_ident
from webhookd.store.postgres.outcomes import OutcomeWriter
from webhookd.store.postgres.peers import Peers
from webhookd.store.postgres.queries import query
from webhookd.store.records import WebhookRecord, WebhookSecrets, naive_utc
from webhookd.store.records import utcnow as local_now

log = logs.get("webhookd.store")

T = TypeVar("T")
Connection = Any  # asyncpg has no type stubs

CONNECT_TIMEOUT = 10.0
# A call outstanding this long means the engine is stuck (for the watchdog). A database
# that is down is not stuck: calls fail fast and the pool reconnects.
STUCK_AFTER = 60.0
CLOSE_TIMEOUT = 5.0
# An announced event that a scan may not have seen (PostgresStore._look_again) is looked
# for again at once after a scan of this daemon, or, while another daemon holds the scan
# lock, after REPOLL seconds, doubling to MAX_REPOLL.
REPOLL = 0.01
MAX_REPOLL = 0.2
# Every statement of the daemon gives up on a lock after LOCK_TIMEOUT and runs at most
# STATEMENT_TIMEOUT (a DBA's ALTER TABLE left open, a producer's transaction holding an
# event id): the call fails as StoreUnavailable and its loop tries again, instead of
# hanging every connection of the pool behind it. Migrations wait as long as they need.
LOCK_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 120.0
# An ingest of several requests together waits this long on a row lock (an id a producer's
# open transaction holds) before its requests go alone, each with LOCK_TIMEOUT: requests
# with other ids then commit without waiting on that transaction.
GROUP_LOCK_WAIT = 0.1
# How often the leader looks for tables whose planner statistics are stale (statistics.py):
# PostgreSQL's activity counters it reads are themselves flushed about once a second.
STATISTICS_EVERY = 1.0


class PostgresStore(tenant_tokens.TenantTokenCalls):
    engine = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str = "webhookd",
        pool_size: int = 10,
        daemon_id: str | None = None,
        dead_after: float = 30.0,
        heartbeat_interval: float = 2.0,
        max_event_bytes: int = 1_048_576,
        shared_settings: Mapping[str, Any] | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
    ) -> None:
        self._url = url
        self.schema = schema
        self._pool_size = max(2, pool_size)
        self.daemon_id = daemon_id or f"{socket.gethostname()}:{os.getpid()}:{_random.token_hex(4)}"
        self.dead_after = dead_after
        self.heartbeat_interval = heartbeat_interval
        # An event written in SQL with more data than this is set aside, as the API
        # refuses a bigger request (admin.max_body_bytes).
        self._max_event_bytes = max_event_bytes
        # Settings every daemon of this queue must share, compared at each heartbeat.
        self.peers = Peers(shared_settings or {})
        self._settings_json = json.dumps(self.peers.mine, sort_keys=True)
        # Never set: this engine reconnects by itself (see base.Store.lost).
        self.lost = asyncio.Event()
        self.migrations_applied: list[int] = []
        self._pool: Any = None
        self._closing = False
        self._listener: Listener | None = None
        self._leader: Leader | None = None
        self._writer: OutcomeWriter | None = None
        self._ingests: IngestGroup | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._statistics: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._outstanding: dict[int, float] = {}
        self._calls = 0
        self._up = False
        self._outage_reported = False
        self._lease = 30.0  # the last claim's: how long an unwritten outcome is retried
        # The database's clock less this daemon's, measured at each heartbeat: the times
        # the daemon decides (an outcome's next attempt, retention and auto-disable
        # thresholds) are written in the database's time, which every daemon shares, so a
        # daemon whose clock is off neither re-drives others' rows early nor delays its own.
        self.skew = timedelta(0)
        # Fifo webhooks, as this daemon's claims last found them: their outcomes are
        # recorded in a transaction that settles their order.
        self._fifo: set[str] = set()
        self._cursor = 0
        self._repoll = REPOLL
        self._scanning = False
        self._scan_failed: str | None = None  # the last scan's error, while it fails
        # A scan whose claims went out before its COMMIT, while that COMMIT runs (see scan).
        self._committing: asyncio.Task[scans.Scanned] | None = None
        self._transactions = 0
        self._claim_transactions = 0
        self._scans = 0
        self._claimed = 0
        self._scan_claimed = 0
        self._operations = 0
        self._scan_key = lock_key(schema, SCANNER)
        self._server_settings = {
            "search_path": quote_ident(schema),
            "application_name": "webhookd",
            # Short statements, many of them: compiling one (jit_above_cost is met by a
            # claim's plan estimates on a big queue) costs a few hundred ms, not its run.
            "jit": "off",
            # Tells the pipeline_events trigger (003_outbox_guards.sql) that this is the
            # daemon: the bodies it writes are kept, where a producer's are not.
            "webhookd.daemon": "on",
            "lock_timeout": f"{max(1, round(lock_timeout * 1000))}ms",
            "statement_timeout": f"{max(1, round(statement_timeout * 1000))}ms",
            # A daemon frozen (SIGSTOP, a paused VM) between two statements of a
            # transaction would hold its locks (the claim lock, rows it updated) while its
            # peers take over: the server ends such a session well within peer_timeout.
            "idle_in_transaction_session_timeout": f"{idle_in_transaction_ms(dead_after)}ms",
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def _connect(self) -> Connection:
        """A connection of its own (LISTEN, the leader's lock), set up as the pool's are."""
        con = await asyncpg.connect(
            self._url, server_settings=self._server_settings, timeout=CONNECT_TIMEOUT
        )
        await _keepalive(con)
        return con

    async def open(self) -> None:
        self._closing = False
        self._stopping.clear()
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                server_settings=self._server_settings,
                timeout=CONNECT_TIMEOUT,
                init=_keepalive,
                reset=_keep_session,
            )
            async with self._pool.acquire() as con:
                self.migrations_applied = await migrate(con, self.schema)
                await self._beat(con)
            self._listener = Listener(
                self._connect,
                {kind: channel(self.schema, kind) for kind in ("events", "deliveries")},
                self._reachable,
            )
            await self._listener.start()
        except Exception as exc:
            await self._teardown()
            raise open_error(exc, self._url, self.schema) from None
        self._up = True
        self._leader = Leader(
            functools.partial(self._call, operations=0), self.daemon_id, self.dead_after
        )
        self._writer = OutcomeWriter(
            self._write_outcomes,
            retryable=lambda exc: isinstance(exc, (StoreUnavailable, *RETRYABLE)),
            patience=lambda: self._lease,
        )
        self._writer.start()
        self._ingests = IngestGroup(self._insert_events)
        self._heartbeat = asyncio.create_task(self._beating(), name="webhookd-pg-heartbeat")
        self._statistics = asyncio.create_task(
            self._keeping_statistics(), name="webhookd-pg-statistics"
        )

    async def close(self) -> None:
        if self._pool is None:
            return
        self._closing = True
        self._stopping.set()
        await stop_task(self._heartbeat, CLOSE_TIMEOUT)
        self._heartbeat = None
        await stop_task(self._statistics, CLOSE_TIMEOUT)
        self._statistics = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._scan_committed()
        if self._writer is not None:
            await self._writer.close(CLOSE_TIMEOUT)
        # Best effort: a daemon that leaves says so; one that cannot is found dead later.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                async with self._pool.acquire() as con:
                    await con.execute(query("unregister"), self.daemon_id)
        await self._teardown()

    async def _teardown(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        self._leader = None
        pool, self._pool = self._pool, None
        self._up = False
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except Exception:
                pool.terminate()

    def healthy(self) -> bool:
        if self._pool is None:
            return False
        now = time.monotonic()
        if any(now - started > STUCK_AFTER for started in self._outstanding.values()):
            return False
        tasks_ended = (
            (self._heartbeat is not None and self._heartbeat.done())
            or (self._writer is not None and self._writer.done())
            or (self._listener is not None and self._listener.done())
        )
        return not tasks_ended

    def available(self) -> bool:
        return self._pool is not None and self._up

    def stats(self) -> dict[str, int]:
        return {
            "transactions": self._transactions,
            "operations": self._operations,
            # Claim transactions, the rows they claimed, and the rows scans claimed in
            # their own transactions (Store.scan's ClaimRequest); scan transactions.
            "claim_transactions": self._claim_transactions,
            "scans": self._scans,
            "claimed": self._claimed,
            "claimed_by_scans": self._scan_claimed,
        }

    def _reachable(self, ok: bool, problem: BaseException | None) -> None:
        """What the last call (or the LISTEN connection) found: the database answers, or not."""
        if ok:
            if not self._up and self._outage_reported:
                log.info("the database answers again")
            self._up = True
            self._outage_reported = False
            return
        self._up = False
        if not self._outage_reported and not self._closing:
            self._outage_reported = True
            detail = scrub(str(problem) or type(problem).__name__, self._url)
            log.warning("the database is unavailable; reconnecting", error=detail)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, operations: int = 1) -> T:
        """Run `fn(connection, *args)` on a pooled connection, translating a database
        that cannot be reached into StoreUnavailable."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the database is closed")
        self._calls += 1
        token = self._calls
        self._outstanding[token] = time.monotonic()
        try:
            async with pool.acquire() as con:
                result = await fn(con, *args)
        except Exception as exc:
            if is_unavailable(exc):
                self._reachable(False, exc)
                raise unavailable(exc, self._url) from None
            self._reachable(True, None)  # it answered, with an error of another kind
            if isinstance(exc, asyncpg.DiskFullError):
                raise unavailable(exc, self._url) from None
            if isinstance(exc, TIMED_OUT):
                raise timed_out(exc, self._url) from None
            raise
        finally:
            del self._outstanding[token]
        self._reachable(True, None)
        if operations:
            self._transactions += 1
            self._operations += operations
        return result

    async def _beat(self, con: Connection) -> None:
        sent = local_now()
        db_now, peers = await con.fetchrow(
            query("heartbeat"),
            self.daemon_id,
            socket.gethostname(),
            os.getpid(),
            self._settings_json,
            float(self.dead_after),
        )
        received = local_now()
        self.skew = db_now - (sent + (received - sent) / 2)
        self.peers.compare(json.loads(peers))

    def _db_time(self, local: datetime) -> datetime:
        """A time of this daemon's clock on the database's, naive UTC (see skew)."""
        return naive_utc(local) + self.skew

    async def _beating(self) -> None:
        """Tell the other daemons this one lives; never fatal (errors logged once an outage)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.heartbeat_interval)
            if self._stopping.is_set():
                return
            try:
                await self._call(self._beat, operations=0)
            except StoreUnavailable:
                pass  # reported by _reachable, once
            except Exception as exc:
                log.warning("heartbeat failed", error=str(exc))
            if self._listener is not None:
                await self._listener.ping()

    async def _keeping_statistics(self) -> None:
        """On the leader, every STATISTICS_EVERY seconds (see statistics.py)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), STATISTICS_EVERY)
            if self._stopping.is_set() or not await self.lead():
                continue
            try:
                analyzed = await self._call(statistics.refresh, operations=0)
            except StoreUnavailable:
                continue
            except Exception as exc:
                log.warning("refreshing the planner's statistics failed", error=str(exc))
                continue
            if analyzed:
                log.debug("planner statistics refreshed", tables=analyzed)

    # -- start-up and upkeep -------------------------------------------------------------

    async def rescue_expired(self, now: datetime) -> int:
        # `now` (this daemon's clock) on the database's: a daemon whose clock is ahead
        # re-drives no lease early.
        forget_after = max(3600.0, 10 * self.dead_after)
        row = await self._call(
            self._rescue_expired, self._db_time(now), float(self.dead_after), forget_after
        )
        return int(row["n"])

    async def _rescue_expired(
        self, con: Connection, now: datetime, dead_after: float, forget_after: float
    ) -> Any:
        """Rescued rows, then every fifo webhook settled: the rows rescued may be heads,
        and this is the safety net for an order a dead daemon left unsettled; and pending
        rows of webhooks inactive or gone parked (claims reading few webhooks' ranges do
        not meet them)."""
        async with con.transaction():
            row = await con.fetchrow(query("rescue_expired"), now, dead_after, forget_after)
            await fifo.settle(con, None)
            strays = [r[0] for r in await con.fetch(query("park_strays"))]
            if strays:
                await park_inactive(con, strays, await db_now(con))
        return row

    async def lead(self) -> bool:
        leader = self._leader
        return False if leader is None or self._closing else await leader.lead()

    async def prune(self, delivered_before: datetime, log_before: datetime, batch: int) -> Pruned:
        return await self._call(
            admin.prune, self._db_time(delivered_before), self._db_time(log_before), batch
        )

    async def auto_disable(
        self, failing_before: datetime, reported_failing_before: datetime | None = None
    ) -> list[str]:
        return await self._call(
            admin.auto_disable,
            self._db_time(failing_before),
            None if reported_failing_before is None else self._db_time(reported_failing_before),
        )

    # -- the data path -------------------------------------------------------------------------

    async def ingest(self, events: list[NewEvent]) -> IngestResult:
        if not events:
            return IngestResult([], 0)
        fresh, conflicts = first_of_each(events)
        if conflicts:
            raise EventConflict(conflicts)
        group = self._ingests
        if group is None:
            raise StoreUnavailable("the database is closed")
        inserted = await group.ingest(list(fresh.values()))
        return IngestResult([e.event_id for e in events], inserted)

    async def _insert_events(self, events: list[NewEvent], grouped: bool) -> set[str]:
        return await self._call(self._ingest, events, grouped, operations=len(events))

    async def _ingest(self, con: Connection, events: list[NewEvent], grouped: bool) -> set[str]:
        """The ids that were new; EventConflict (nothing stored) if a stored event has
        one of these ids with other content. Several requests' events (`grouped`) wait
        GROUP_LOCK_WAIT at most on another transaction holding one of their ids."""
        wait = f"{round(GROUP_LOCK_WAIT * 1000)}ms" if grouped else None
        if len(events) == 1:
            # This is every request's latency on an idle daemon: one statement.
            e = events[0]
            row = await con.fetchrow(
                query("ingest_one"),
                e.event_id,
                e.event_type,
                e.payload,
                e.body,
                naive_utc(e.occurred_at),
                e.tenant,
                e.traceparent,
                wait,
            )
            if row is not None:
                return {e.event_id}
            await _check_known(con, events, set())
            return set()
        # BEGIN and the shorter lock wait in one round trip (con.transaction() would send
        # BEGIN alone).
        await con.execute(f"BEGIN; SET LOCAL lock_timeout = '{wait}'" if wait else "BEGIN")
        try:
            rows = await con.fetch(
                query("ingest"),
                [e.event_id for e in events],
                [e.event_type for e in events],
                [e.payload for e in events],
                [e.body for e in events],
                [naive_utc(e.occurred_at) for e in events],
                [e.tenant for e in events],
                [e.traceparent for e in events],
            )
            new = {r[0] for r in rows}
            await _check_known(con, events, new)
            await con.execute("COMMIT")
        except BaseException:
            if not con.is_closed() and con.is_in_transaction():
                with contextlib.suppress(Exception):
                    await con.execute("ROLLBACK")
            raise
        return new

    async def scan(self, batch_size: int, claim: ClaimRequest | None = None) -> ScanResult:
        # This daemon's last scan handed its claims out and is still committing: the next
        # scan starts after it (answered "nothing new" instead, a scanner that is behind
        # waited for its next wake-up, and throughput fell by half).
        await self._scan_committed()
        if self._scanning:
            # This daemon's other scan holds scan_lock: asking the database would cost a
            # transaction (BEGIN, the lock refused, COMMIT) to learn just that. Measured
            # at 500 events/s: 2,864 of 6,097 scans, most of them empty.
            if self._scan_failed is not None:
                # The scan this one would wait for keeps failing: say so (/readyz counts it).
                raise RuntimeError(self._scan_failed)
            result = ScanResult(0, 0, self._cursor)
        else:
            self._scanning = True
            loop = asyncio.get_running_loop()
            started = loop.time()
            claimed: asyncio.Future[scans.Scanned] = loop.create_future()
            work = asyncio.ensure_future(self._call(self._scan, batch_size, claim, claimed))
            try:
                await asyncio.wait((work, claimed), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                work.cancel()
                self._scanning = False
                raise
            if claimed.done() and not work.done():
                # The claims go to the workers while the COMMIT runs: the attempt does not
                # wait for it. Their outcomes do (_write_outcomes), since another connection
                # does not see the rows until then; and so does the next scan (it starts
                # with _scan_committed).
                # Should the COMMIT fail, the rows it inserted are gone and the cursor has
                # not moved (the events are scanned again), and rows it claimed are pending
                # again: a duplicate attempt, never a lost one.
                self._committing = work
                work.add_done_callback(self._committed)
                scanned = claimed.result()
            else:
                try:
                    scanned = await work
                except Exception as exc:
                    self._scan_failed = str(exc) or type(exc).__name__
                    raise
                finally:
                    self._scanning = False
                self._scan_failed = None
            self._look_again(scanned, started, batch_size)
            result = scanned.result
        return result

    def _committed(self, work: asyncio.Task[scans.Scanned]) -> None:
        """The COMMIT of a scan whose claims went out before it (see scan) has ended."""
        self._scanning = False
        if self._committing is work:
            self._committing = None
        if work.cancelled():
            self._scan_failed = "the scan was cancelled before its commit"
        elif (exc := work.exception()) is not None:
            self._scan_failed = str(exc) or type(exc).__name__
            log.error("a scan's commit failed; its events are scanned again", error=str(exc))
        else:
            self._scan_failed = None

    async def _scan_committed(self) -> None:
        """Wait for the COMMIT of a scan whose claims went out before it, if one runs."""
        work = self._committing
        if work is not None and not work.done():
            await asyncio.wait((work,))

    def _look_again(self, scanned: scans.Scanned, started: float, batch_size: int) -> None:
        """Wake the scanners again if an event announced to this daemon may not have been
        seen by this scan, begun at loop time `started`: its transaction committed after
        the scan's snapshot. A scan that filled its batch is followed by another anyway.
        Events of the API's own ingests are announced while the scan they woke runs, with
        the snapshot that saw them: asking again on every announcement during a scan cost
        one empty scan per event."""
        listener = self._listener
        if listener is None or scanned.result.events >= batch_size:
            return
        if scanned.snapshot is None:
            # Another daemon holds the scan lock, and should see them: in case it fails,
            # look again later, less often the longer it lasts.
            if listener.unseen:
                listener.poke_later("events", self._repoll)
                self._repoll = min(self._repoll * 2, MAX_REPOLL)
            return
        self._repoll = REPOLL
        if listener.seen(started, scanned.snapshot, scanned.fresh):
            listener.poke_later("events", 0.0)

    async def _scan(
        self,
        con: Connection,
        batch_size: int,
        claim: ClaimRequest | None,
        claimed: asyncio.Future[scans.Scanned] | None = None,
    ) -> scans.Scanned:
        scan_claim: scans.ScanClaim | None = None
        if claim is not None and claim.limit > 0:
            self._lease = claim.lease
            scan_claim = functools.partial(
                claims.take,
                daemon_id=self.daemon_id,
                fifo_webhooks=self._fifo,
                limit=claim.limit,
                per_webhook=claim.per_webhook,
                lease=claim.lease,
                cap_ids=list(claim.caps),
                cap_values=[int(v) for v in claim.caps.values()],
            )
        scanned = await scans.scan(
            con,
            self._scan_key,
            batch_size,
            self._max_event_bytes,
            self._cursor,
            self.schema,
            scan_claim,
            None if claimed is None or claim is None or not claim.early else claimed.set_result,
        )
        self._scans += 1
        self._cursor = scanned.result.cursor
        self._scan_claimed += len(scanned.result.claims)
        return scanned

    async def claim(
        self,
        limit: int,
        per_webhook: int,
        lease: float,
        caps: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        if limit <= 0:
            return []
        self._lease = lease
        wanted = dict(caps or {})
        return await self._call(
            self._claim,
            limit,
            per_webhook,
            lease,
            list(wanted),
            [int(v) for v in wanted.values()],
            operations=limit,
        )

    async def _claim(
        self,
        con: Connection,
        limit: int,
        per_webhook: int,
        lease: float,
        cap_ids: list[str],
        cap_values: list[int],
    ) -> list[Claim]:
        result = await claims.claim(
            con,
            self.daemon_id,
            self._fifo,
            limit,
            per_webhook,
            lease,
            cap_ids,
            cap_values,
        )
        self._claim_transactions += 1
        self._claimed += len(result)
        return result

    async def wait_for_work(self, channel: Channel, within: float) -> None:
        listener = self._listener
        if listener is None:
            await asyncio.sleep(within)
            return
        event = listener.events[channel]
        if not event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), within)
        event.clear()

    def record(self, outcome: Outcome) -> asyncio.Future[bool]:
        writer = self._writer
        if writer is None or self._closing:
            raise StoreUnavailable("the database is closed")
        return writer.submit(outcome)

    async def _write_outcomes(self, outcomes: list[Outcome]) -> set[str]:
        # An outcome of a claim that went out before its scan's COMMIT must not be written
        # before that COMMIT: its row would not be seen, and the outcome taken as late.
        await self._scan_committed()
        return await self._call(self._record, outcomes, operations=len(outcomes))

    async def _record(self, con: Connection, outcomes: list[Outcome]) -> set[str]:
        """One statement; with outcomes of fifo webhooks, in a transaction that settles
        their order (fifo.settle) once they are applied. A webhook switched to fifo since
        its rows were claimed is settled right after, in a transaction of its own (and by
        the leader's safety net should this daemon die in between). The webhooks whose
        rows may be due now (see Store.record): those with a due pending row, and the
        fifo ones if the settling let a row through."""
        promoted = 0
        if operational.reportable(outcomes):  # a 410 or a dead delivery: reported with it
            row, promoted = await operational.record(con, outcomes, self._apply_outcomes)
        elif not any(o.webhook_id in self._fifo for o in outcomes):
            row = await self._apply_outcomes(con, outcomes)
            if row["fifo"]:
                async with con.transaction():
                    promoted = await fifo.settle(con, row["fifo"])
        else:
            async with con.transaction():
                row = await self._apply_outcomes(con, outcomes)
                if row["fifo"]:
                    promoted = await fifo.settle(con, row["fifo"])
        return {*(row["waiting"] or ()), *((row["fifo"] or ()) if promoted else ())}

    async def _apply_outcomes(self, con: Connection, outcomes: list[Outcome]) -> Any:
        return await con.fetchrow(
            query("record"),
            [o.webhook_id for o in outcomes],
            [o.event_id for o in outcomes],
            [Status(o.status).value for o in outcomes],
            [o.attempt for o in outcomes],
            [
                None if o.next_attempt_at is None else self._db_time(o.next_attempt_at)
                for o in outcomes
            ],
            [self._db_time(o.attempted_at) for o in outcomes],
            [float(o.duration_ms) for o in outcomes],
            [o.status_code for o in outcomes],
            [o.error for o in outcomes],
            [o.response_excerpt for o in outcomes],
            [o.outcome for o in outcomes],
            [o.deactivate_webhook for o in outcomes],
            [_naive(o.claimed_until) for o in outcomes],
            [o.spent for o in outcomes],
        )

    async def release(self, keys: list[tuple[str, str]]) -> int:
        if not keys:
            return 0
        row = await self._call(
            self._release, [k[0] for k in keys], [k[1] for k in keys], operations=len(keys)
        )
        return int(row["n"])

    async def _release(self, con: Connection, webhook_ids: list[str], event_ids: list[str]) -> Any:
        async with con.transaction():
            row = await con.fetchrow(query("release"), webhook_ids, event_ids, self.daemon_id)
            await fifo.settle(con, row["hooks"] or [])
        return row

    # -- webhooks (admin.py) -------------------------------------------------------------

    async def create_webhook(
        self,
        url: str,
        event_types: list[str],
        secret: str,
        description: str,
        limits: WebhookLimits | None = None,
        tenant: str | None = None,
    ) -> WebhookRecord:
        return await self._call(
            admin.create_webhook,
            url,
            event_types,
            secret,
            description,
            limits or WebhookLimits(),
            tenant,
        )

    async def get_webhook(self, webhook_id: str) -> WebhookRecord:
        return await self._call(admin.get_webhook, webhook_id)

    async def get_webhook_secrets(self, webhook_id: str) -> WebhookSecrets:
        return await self._call(admin.get_webhook_secrets, webhook_id)

    async def list_webhooks(self, limit: int, after: str | None, tenant: str | None = None) -> Page:
        return await self._call(admin.list_webhooks, limit, after, tenant)

    async def update_webhook(self, webhook_id: str, patch: WebhookPatch) -> WebhookRecord:
        return await self._call(admin.update_webhook, webhook_id, patch)

    async def delete_webhook(self, webhook_id: str) -> None:
        await self._call(admin.delete_webhook, webhook_id)

    async def rotate_secret(self, webhook_id: str, secret: str, grace: float) -> WebhookRecord:
        return await self._call(admin.rotate_secret, webhook_id, secret, grace)

    # -- operators (admin.py) ---------------------------------------------------------------

    async def list_deliveries(
        self, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
    ) -> DeliveryPage:
        return await self._call(admin.list_deliveries, filt, limit, after)

    async def list_attempts(self, webhook_id: str, event_id: str) -> list[dict[str, Any]]:
        return await self._call(admin.list_attempts, webhook_id, event_id)

    async def redrive(
        self,
        status: Status,
        webhook_id: str | None,
        since: datetime | None,
        tenant: str | None = None,
    ) -> int:
        return await self._call(admin.redrive, status, webhook_id, since, tenant)

    async def replay(self, event_id: str, webhook_id: str | None, tenant: str | None = None) -> int:
        return await self._call(admin.replay, event_id, webhook_id, tenant)

    async def status(self, tenant: str | None = None) -> StatusReport:
        report = await self._call(admin.status, tenant)
        report.settings_disagree = dict(self.peers.disagreements)
        return report


def idle_in_transaction_ms(dead_after: float) -> int:
    """Half of peer_timeout, within 1 to 10 s: the daemon's own transactions never wait
    between statements for longer than a round trip."""
    return round(max(1.0, min(10.0, dead_after / 2)) * 1000)


async def _keep_session(con: Connection) -> None:
    """What a pooled connection needs on its way back to the pool: nothing. asyncpg's
    default sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` after every
    call, one more round trip each time, for session state this engine never leaves on a
    pooled connection: its advisory locks are transaction-level (the leader's session
    lock and LISTEN have connections of their own), its settings are the connection's
    startup parameters or SET LOCAL, and it opens no cursors. asyncpg still rolls back a
    transaction left open before it calls this."""


async def _keepalive(con: Connection) -> None:
    """TCP keepalives on a connection to a server over the network: a server that vanished
    without closing the connection (a partition, a crashed host) fails the calls waiting
    on it in about half a minute, as StoreUnavailable, instead of hanging them for the
    kernel's retransmission timeout (many minutes)."""
    transport = getattr(con, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else naive_utc(value)


async def _check_known(con: Connection, events: list[NewEvent], new: set[str]) -> None:
    """EventConflict if an event not among the `new` ids is stored with other content."""
    old = [e for e in events if e.event_id not in new]
    if not old:
        return
    rows = await con.fetch(query("ingest_known"), [e.event_id for e in old])
    stored = {r["event_id"]: r for r in rows}
    differing = [
        e.event_id
        for e in old
        if (r := stored.get(e.event_id)) is not None
        and not same_content(e, r["event_type"], r["tenant"], r["body"], r["data"])
    ]
    if differing:
        raise EventConflict(sorted(differing))
