"""The scanner: tails pipeline_events by seq into the delivery queue.

Each pass is one transaction that enqueues a batch and advances the durable cursor,
so an event is enqueued exactly once per matching webhook whatever crashes between.
The pass also claims, in that transaction, what the worker pool has room for (the happy
path: a delivery reaches a worker with no claim transaction of its own); the pool takes
those claims as it takes its own claimers'.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from webhookd import logs
from webhookd.store.base import ClaimRequest, Notifier, ScanResult, Store, sleep_until_work

log = logs.get("webhookd.scanner")

SCANNERS = 2
# Scans failing in a row before /readyz says the scanner is not working: one failure is a
# blip (a restart of the database, a lock timeout), several a scanner that cannot advance.
FAILING_AFTER = 3


class Workers(Protocol):
    """What the scanner asks of the worker pool (workers.WorkerPool)."""

    def offer(self) -> ClaimRequest | None:
        """What a scan may claim for the pool now; None: nothing."""
        ...

    async def take(self, result: ScanResult) -> None:
        """A scan's result: its claims to attempt, and whether to wake the claimers for
        the rows it enqueued."""
        ...


class Scanner:
    def __init__(
        self,
        store: Store,
        *,
        batch_size: int,
        poll_interval: float,
        workers: Workers,
        notifier: Notifier | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._workers = workers
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.last: ScanResult | None = None
        self.running = False
        self.failures = 0  # scans failed in a row

    @property
    def healthy(self) -> bool:
        """Running, and its scans do not keep failing (for /readyz)."""
        return self.running and self.failures < FAILING_AFTER

    def wake(self) -> None:
        """An ingest of this daemon is committing new events: look now instead of at the
        next poll. A notifier announces every committed event, this daemon's too, once
        it is committed: woken before that, a scan would read a snapshot without the
        events, find nothing, and look again when the announcement came (two scans an
        event, measured on PostgreSQL)."""
        if self._notifier is None:
            self._wake.set()

    async def _scanner(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            # After a failure the scan claims nothing: whatever failed in the claim must
            # not hold up the events, which the claimers deliver all the same.
            offered = self._workers.offer() if not self.failures else None
            try:
                result = await self._store.scan(self._batch_size, offered)
            except Exception as exc:
                self.failures += 1
                log.error("scan failed", error=str(exc), failures_in_a_row=self.failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._poll_interval)
                continue
            await self._workers.take(result)
            self.failures = 0
            self.last = result
            if result.events < self._batch_size:  # no backlog: wait for new events
                await sleep_until_work(self._notifier, "events", self._wake, self._poll_interval)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Scan, and when the scan found no backlog, sleep until an ingest of this daemon
        wakes it, the store reports new events, or the poll interval passes. Two scans
        are asked at a time, for the reason two claims are (see WorkerPool.run); the
        cursor makes a second scan of the same events impossible."""
        self.running = True
        try:
            await asyncio.gather(*(self._scanner() for _ in range(SCANNERS)))
        finally:
            self.running = False
