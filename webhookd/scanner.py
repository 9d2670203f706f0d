"""The scanner: tails pipeline_events by seq into the delivery queue.

Each pass is one transaction that enqueues a batch and advances the durable cursor,
so an event is enqueued exactly once per matching webhook whatever crashes between.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from webhookd import logs
from webhookd.store.base import ScanResult, Store

log = logs.get("webhookd.scanner")

SCANNERS = 2
# How long a scan made after a wake-up may wait to share a transaction.
WOKEN_RIDE = 0.002


class Scanner:
    def __init__(
        self,
        store: Store,
        *,
        batch_size: int,
        poll_interval: float,
        on_enqueued: Callable[[int], None],
    ) -> None:
        self._store = store
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._on_enqueued = on_enqueued
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.last: ScanResult | None = None
        self.running = False

    def wake(self) -> None:
        """An ingest committed new events: look now instead of at the next poll."""
        self._wake.set()

    async def _scanner(self) -> None:
        while not self._stopping.is_set():
            ride = WOKEN_RIDE if self._wake.is_set() else self._poll_interval
            self._wake.clear()
            try:
                result = await self._store.scan(self._batch_size, ride=ride)
            except Exception as exc:
                log.error("scan failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._poll_interval)
            else:
                self.last = result
                if result.enqueued:
                    self._on_enqueued(result.enqueued)
                if result.events >= self._batch_size:
                    self._wake.set()  # a backlog: the next batch now

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Scan without pause: each scan rides with the next transaction (Store.scan's
        `ride`), so events are enqueued in the commit that ingests them; after a wake-up
        (an ingest committed) the scan rides only briefly; with no other work it runs
        alone every poll interval. Two scans wait at a time, for the reason two claims
        do (see WorkerPool.run); the cursor makes a second scan of the same events
        impossible."""
        self.running = True
        try:
            await asyncio.gather(*(self._scanner() for _ in range(SCANNERS)))
        finally:
            self.running = False
