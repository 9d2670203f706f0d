"""Ingests committed together: the requests that arrive while one commit is on its way
share the next one.

Every commit on `pipeline_events` sends a NOTIFY (the trigger wakes the scanners), and
PostgreSQL serialises committing transactions that notify: one request, one commit caps
single-event ingest at a few hundred requests per second whatever the pool size. An idle
daemon commits a request at once (no window to wait out); under load the requests that
queued behind a commit go in one statement, one transaction, one notification.

What each request sees is what it would see alone: its 202 only after the commit that
holds its events, the count of its events that were new, and a conflict (same id, other
content) for itself only: a batch that meets one is rolled back and its requests are
committed one by one, as they would have been without the grouping.

A producer's transaction that holds one of the ids (published, not yet committed) makes
the insert wait on its row lock: requests committed together give up after a short wait
(LockTimeout) and then each goes alone, at once and side by side, so that only the one
holding that id waits, up to the store's lock timeout, and gets a 503 if it runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from webhookd.events import NewEvent
from webhookd.queue.conflicts import same_content
from webhookd.store.base import EventConflict, StoreUnavailable
from webhookd.store.postgres.errors import LockTimeout

# Events one commit takes at most (a request bigger than this goes alone).
MAX_EVENTS = 5000


@dataclass(slots=True)
class _Request:
    events: list[NewEvent]
    future: asyncio.Future[int]
    spawned: bool = False  # answered by a task of its own (_spawn)


class IngestGroup:
    def __init__(self, insert: Callable[[list[NewEvent], bool], Awaitable[set[str]]]) -> None:
        """`insert(events, grouped)` stores events with distinct ids in one transaction
        and returns the ids that were new, or raises EventConflict having stored nothing
        (LockTimeout after a short wait on a row lock when `grouped`)."""
        self._insert = insert
        self._waiting: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        self._alone_tasks: set[asyncio.Task[None]] = set()
        self.commits = 0

    async def ingest(self, events: list[NewEvent]) -> int:
        """Store one request's events (distinct ids); how many were new."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(events, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="webhookd-pg-ingest")
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                try:
                    await self._commit(batch)
                finally:
                    for request in batch:  # cancelled mid-batch: none hangs
                        if not request.spawned:
                            _fail(request, StoreUnavailable("the database is closed"))
        finally:
            # Cancelled (the store closing) with requests still waiting: none hangs.
            for request in self._waiting:
                _fail(request, StoreUnavailable("the database is closed"))
            self._waiting.clear()

    def _take(self) -> list[_Request]:
        """The waiting requests that fit in one commit, oldest first; at least one."""
        n = 0
        taken = 0
        for request in self._waiting:
            if taken and n + len(request.events) > MAX_EVENTS:
                break
            n += len(request.events)
            taken += 1
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        return batch

    async def _commit(self, batch: list[_Request]) -> None:
        together: list[_Request] = []
        apart: list[_Request] = []
        merged: dict[str, NewEvent] = {}
        for request in batch:
            clash = any(
                (prior := merged.get(e.event_id)) is not None
                and not same_content(e, prior.event_type, prior.tenant, prior.body)
                for e in request.events
            )
            if clash:
                apart.append(request)  # its conflict is with another request: its own
                continue
            together.append(request)
            for event in request.events:
                merged.setdefault(event.event_id, event)
        while len(together) > 1:
            try:
                new = await self._insert(
                    list({e.event_id: e for r in together for e in r.events}.values()), True
                )
            except LockTimeout:
                # Another transaction holds one of the ids: each request alone, side by
                # side, and the flush goes on with the requests arriving meanwhile.
                for request in together:
                    self._spawn(request)
                together = []
                break
            except EventConflict as conflict:
                # Rolled back: the requests holding those ids go alone (each then says
                # whose conflict it is), the others try again together.
                ids = set(conflict.event_ids)
                clashing = [r for r in together if any(e.event_id in ids for e in r.events)]
                if not clashing:
                    clashing = together  # cannot say whose: each alone
                apart += clashing
                together = [r for r in together if r not in clashing]
                continue
            except Exception as exc:
                for request in together:
                    _fail(request, exc)
                together = []
                break
            self.commits += 1
            for request in together:
                own = {e.event_id for e in request.events} & new
                new -= own
                if not request.future.done():
                    request.future.set_result(len(own))
            together = []
        for request in together + apart:
            await self._alone(request, patient=False)

    def _spawn(self, request: _Request) -> None:
        request.spawned = True
        task = asyncio.create_task(
            self._alone(request, patient=True), name="webhookd-pg-ingest-alone"
        )
        self._alone_tasks.add(task)
        task.add_done_callback(self._alone_tasks.discard)

    async def _alone(self, request: _Request, *, patient: bool) -> None:
        """One request in a transaction of its own. Not `patient`: after a short wait on
        another transaction's row lock it goes on in a task of its own, which waits up
        to the store's lock timeout, so that the flush is not held up behind it."""
        try:
            new = await self._insert(request.events, not patient)
        except LockTimeout as exc:
            if patient:
                _fail(request, exc)
            else:
                self._spawn(request)
            return
        except Exception as exc:
            _fail(request, exc)
        else:
            self.commits += 1
            if not request.future.done():
                request.future.set_result(len(new))


def _fail(request: _Request, exc: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(exc)
