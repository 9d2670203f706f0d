"""Upkeep services, each small, each started and stopped the same way, each run on the
elected daemon only when several share one database (its Peer).

- LeaseRescuer: rows whose lease ran out (a stuck or lost attempt) are re-driven.
- Pruner: delivered queue rows and old log rows go, in small batches.
- AutoDisabler: a webhook that failed every attempt for `delivery.disable_after` is
  deactivated and its rows parked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from webhookd import logs
from webhookd.metrics import Metrics
from webhookd.store.base import Peer, Store

log = logs.get("webhookd.upkeep")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Periodic:
    """Runs `tick` every `interval` seconds until stopped; a failing tick is logged, not fatal."""

    name = "periodic"

    def __init__(self, store: Store, interval: float, peer: Peer | None = None) -> None:
        self.interval = interval
        self._store = store
        self._peer = peer
        self._stopping = asyncio.Event()

    async def tick(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            if self._stopping.is_set():
                return
            try:
                # On a shared database only the elected daemon does upkeep.
                if self._peer is None or await self._peer.lead():
                    await self.tick()
            except Exception as exc:
                log.error(f"{self.name} failed", error=str(exc))


class LeaseRescuer(Periodic):
    name = "lease rescue"

    def __init__(
        self,
        store: Store,
        interval: float,
        on_rescued: Callable[[], None],
        peer: Peer | None = None,
    ) -> None:
        super().__init__(store, interval, peer)
        self._on_rescued = on_rescued

    async def tick(self) -> None:
        rescued = await self._store.rescue_expired(_now())
        if rescued:
            log.warning("re-driving deliveries whose lease expired", count=rescued)
            self._on_rescued()


class Pruner(Periodic):
    name = "retention pruning"

    def __init__(
        self,
        store: Store,
        interval: float,
        delivered_ttl: float,
        log_ttl: float,
        batch: int,
        peer: Peer | None = None,
    ) -> None:
        super().__init__(store, interval, peer)
        self._delivered_ttl = delivered_ttl
        self._log_ttl = log_ttl
        self._batch = batch

    async def tick(self) -> None:
        total_queue = total_log = 0
        while not self._stopping.is_set():
            now = _now()
            pruned = await self._store.prune(
                now - timedelta(seconds=self._delivered_ttl),
                now - timedelta(seconds=self._log_ttl),
                self._batch,
            )
            total_queue += pruned.queue_rows
            total_log += pruned.log_rows
            if pruned.queue_rows < self._batch and pruned.log_rows < self._batch:
                break
            await asyncio.sleep(0)  # let deliveries' transactions in between batches
        if total_queue or total_log:
            log.info("pruned", queue_rows=total_queue, log_rows=total_log)


class AutoDisabler(Periodic):
    name = "auto-disable"

    def __init__(
        self,
        store: Store,
        interval: float,
        after: float,
        metrics: Metrics,
        peer: Peer | None = None,
        failing_after: float | None = None,
    ) -> None:
        super().__init__(store, interval, peer)
        self._after = after
        self._metrics = metrics
        # operational.failing_after: webhookd.webhook.failing (None: not reported).
        self._failing_after = failing_after

    async def tick(self) -> None:
        now = _now()
        disabled = await self._store.auto_disable(
            now - timedelta(seconds=self._after),
            None if self._failing_after is None else now - timedelta(seconds=self._failing_after),
        )
        for webhook_id in disabled:
            self._metrics.auto_disabled.inc()
            log.warning(
                "webhook disabled: every attempt failed for delivery.disable_after",
                webhook_id=webhook_id,
                disable_after_seconds=self._after,
            )
