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

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        self.running = True
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    result = await self._store.scan(self._batch_size)
                except Exception as exc:
                    log.error("scan failed", error=str(exc))
                else:
                    self.last = result
                    if result.enqueued:
                        self._on_enqueued(result.enqueued)
                    if result.events >= self._batch_size:
                        continue  # a backlog: keep going without waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        finally:
            self.running = False
