"""Outcomes written in batches: one statement, one round trip, per batch.

`record` buffers an outcome and returns a future; a flusher task writes the buffer when
about 2 ms have passed since the first outcome in it, or at once when 500 are waiting,
and settles each future when its batch has committed, with whether rows of its webhook
may be due (Store.record). While the database is unavailable the flusher keeps the
outcomes and tries again with backoff (0.1 s doubling to 5 s); an outcome still unwritten
after `patience()` seconds (the lease: by then its row is re-driven anyway) fails with the
error. Any other error is narrowed down by writing the batch's outcomes one at a time, so
that one bad outcome fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from webhookd import logs
from webhookd.store.base import Outcome, StoreUnavailable
from webhookd.store.postgres.common import stop_task

log = logs.get("webhookd.store")

WINDOW = 0.002
BATCH = 500
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0


@dataclass(slots=True)
class _Waiting:
    outcome: Outcome
    future: asyncio.Future[bool]
    since: float  # loop time of record()


class OutcomeWriter:
    def __init__(
        self,
        apply: Callable[[list[Outcome]], Awaitable[set[str]]],
        *,
        retryable: Callable[[BaseException], bool],
        patience: Callable[[], float],
    ) -> None:
        self._apply = apply
        self._retryable = retryable
        self._patience = patience
        self._buffer: list[_Waiting] = []
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._writing: list[_Waiting] = []  # the batch being written
        self.batches = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhookd-pg-outcomes")

    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def submit(self, outcome: Outcome) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        if self._closing or self._task is None:
            raise StoreUnavailable("the database is closed")
        future: asyncio.Future[bool] = loop.create_future()
        self._buffer.append(_Waiting(outcome, future, loop.time()))
        self._wake.set()
        if len(self._buffer) >= BATCH:
            self._full.set()
        return future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF
        while True:
            if not self._buffer:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._buffer[0].since + WINDOW - loop.time()
            if delay > 0 and len(self._buffer) < BATCH and not self._closing:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), delay)
            batch = self._writing = self._buffer[:BATCH]
            del self._buffer[:BATCH]
            try:
                due_hooks = await self._apply([w.outcome for w in batch])
            except Exception as exc:
                if not self._retryable(exc):
                    await self._one_by_one(batch, exc)
                    self._writing = []
                    continue
                self._writing = []
                self._keep_or_fail(batch, exc)
                if self._buffer and not self._closing:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._writing = []
            backoff = FIRST_BACKOFF
            self.batches += 1
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_result(waiting.outcome.webhook_id in due_hooks)

    def _keep_or_fail(self, batch: list[_Waiting], exc: BaseException) -> None:
        """Back to the head of the buffer, but those that waited their patience out (or
        all of them, when closing) fail with `exc`."""
        now = asyncio.get_running_loop().time()
        patience = self._patience()
        keep: list[_Waiting] = []
        failed = 0
        for waiting in batch:
            if self._closing or now - waiting.since >= patience:
                failed += 1
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            else:
                keep.append(waiting)
        if failed:
            log.error(
                "outcomes could not be written; their leases will re-drive them",
                count=failed,
                error=str(exc),
            )
        self._buffer[:0] = keep

    async def _one_by_one(self, batch: list[_Waiting], exc: BaseException) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        for i, waiting in enumerate(batch):
            try:
                due_hooks = await self._apply([waiting.outcome])
            except Exception as one:
                if self._retryable(one):
                    self._buffer[:0] = batch[i:]
                    return
                if not waiting.future.done():
                    waiting.future.set_exception(one)
            else:
                if not waiting.future.done():
                    waiting.future.set_result(waiting.outcome.webhook_id in due_hooks)

    async def close(self, grace: float) -> None:
        """Write what is buffered (one try while the database is unavailable), then fail
        whatever is left with StoreUnavailable."""
        self._closing = True
        self._wake.set()
        self._full.set()
        if self._task is not None:
            await asyncio.wait([self._task], timeout=grace)
            await stop_task(self._task, grace)
        closed = StoreUnavailable("the database is closed")
        for waiting in [*self._writing, *self._buffer]:
            if not waiting.future.done():
                waiting.future.set_exception(closed)
        self._buffer.clear()
        self._writing = []
