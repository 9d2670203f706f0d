"""A thread with its own cursor of the connection commits many operations per transaction.

Callers on the event loop submit (batch function, payload) pairs and await a future.
The thread drains everything queued, runs each batch function once over all payloads
of its kind inside one transaction, commits once, and resolves all futures with one
wake-up of the loop. If a transaction fails, its operations are retried one per
transaction so that one bad operation fails alone. A result its batch function lets go
early (common.before_commit: a scan's claims of rows it has just inserted) is resolved
before the commit, and its operation is not retried if the transaction then fails.

The DuckDB store runs two: the main writer (claims, outcomes, scans, everything on the
queue) and the ingest writer, which only appends events, so that a producer's 202 waits
for its own small commit and not for a transaction of claims and outcomes. When the
ingest writer commits it `kick`s the main writer: the riders waiting for new events
board a transaction at once (see Writer.kick).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

P = TypeVar("P")
R = TypeVar("R")

MAX_OPS_PER_TRANSACTION = 4096


class Connection(Protocol):
    def execute(self, query: str, parameters: object = ...) -> Any: ...


BatchFn = Callable[[Any, Sequence[Any]], Sequence[Any]]


@dataclass(slots=True)
class _Op(Generic[P]):
    fn: BatchFn
    payload: P
    # None for a kick (see Writer.kick): it boards riders, and runs nothing itself.
    future: asyncio.Future[Any] | None
    priority: int
    # A rider waits, until this monotonic time at most, for other work to share its
    # transaction; 0.0 for an operation that wants a transaction now.
    ride_until: float = 0.0
    # The work a rider waits for (batch functions); None: any.
    rides_with: frozenset[BatchFn] | None = None


class WriterClosed(Exception):
    pass


class Writer:
    def __init__(
        self,
        con: Any,
        *,
        idle: Callable[[Any, bool], None] | None = None,
        idle_every: float = 1.0,
        name: str = "webhookd-writer",
        on_commit: Callable[[], None] | None = None,
        gate: threading.Lock | None = None,
    ) -> None:
        self._con = con
        self._idle = idle
        self._idle_every = idle_every
        # Called on this thread after a transaction, or its operations retried alone,
        # committed anything, once its callers have been told.
        self._on_commit = on_commit
        # Held from BEGIN to COMMIT or ROLLBACK: whoever else takes it (a CHECKPOINT, which
        # DuckDB refuses while another write transaction is open) waits for no more than
        # the transaction under way.
        self._gate: contextlib.AbstractContextManager[Any] = (
            gate if gate is not None else contextlib.nullcontext()
        )
        self._queue: queue.SimpleQueue[_Op[Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._riders: list[_Op[Any]] = []
        # Kinds kicked while no rider waited for them (see kick).
        self._missed: set[BatchFn] = set()
        self.transactions = 0
        self.operations = 0
        self.last_progress = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def healthy(self, stall: float = 60.0) -> bool:
        """Alive, and not stuck: work waiting must not wait longer than `stall` seconds."""
        if not self._thread.is_alive():
            return False
        return self._queue.empty() or time.monotonic() - self.last_progress < stall

    def submit(
        self,
        fn: BatchFn,
        payload: Any,
        *,
        priority: int = 1,
        ride: float = 0.0,
        rides_with: frozenset[BatchFn] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one operation; lower priority values run first within a transaction.

        With `ride` > 0 the operation starts no transaction of its own for up to that many
        seconds: it joins the next one that other work starts. A poll (a scan, a claim)
        that finds nothing then costs no commit, and one that rides with an ingest sees
        that ingest's events in the same transaction. With `rides_with`, it joins only a
        transaction doing one of those batch functions (or runs alone when its time is up).
        """
        if self._closed:
            raise WriterClosed("the database writer is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        until = time.monotonic() + ride if ride > 0 else 0.0
        self._queue.put(_Op(fn, payload, future, priority, until, rides_with))
        return future

    def kick(self, kind: BatchFn) -> None:
        """Work of `kind` was committed elsewhere (the ingest writer's events): the riders
        that wait for that kind of work (`rides_with`), and those that wait for any, board
        a transaction now, as if such work had been submitted here. Safe from any thread;
        costs nothing when no rider waits. Kicks queued while a transaction runs start
        one transaction after it, together with whatever else is queued then. A kick
        that finds no rider waiting for its kind (they were on their way back from the
        transaction before) is kept: the next rider that waits for that kind boards at
        once, instead of waiting its ride out for the next kick."""
        if not self._closed:
            self._queue.put(_Op(kind, None, None, 0))

    def stop(self, timeout: float | None = None) -> None:
        """Finish everything queued, then end the thread."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)

    def _drain(self, first: _Op[Any]) -> tuple[list[_Op[Any]], bool]:
        more, stop = self._drain_more(1)
        return [first, *more], stop

    def _drain_more(self, have: int) -> tuple[list[_Op[Any]], bool]:
        ops: list[_Op[Any]] = []
        while have + len(ops) < MAX_OPS_PER_TRANSACTION:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return ops, False
            if op is None:
                return ops, True
            ops.append(op)
        return ops, False

    def _wait_for_work(self) -> float | None:
        """How long to block for the next operation: until the first rider is due, or
        the next upkeep, or for ever."""
        waits = []
        if self._riders:
            waits.append(max(0.0, min(op.ride_until for op in self._riders) - time.monotonic()))
        if self._idle is not None:
            waits.append(self._idle_every)
        return min(waits) if waits else None

    def _run(self) -> None:
        last_idle = time.monotonic()
        while True:
            try:
                first = self._queue.get(timeout=self._wait_for_work())
            except queue.Empty:
                due = self._overdue()
                if due:
                    self._execute(due)
                elif self._idle is not None:
                    self._run_idle(busy=False)
                    last_idle = time.monotonic()
                continue
            if first is None:
                riders, self._riders = self._riders, []
                if riders:
                    self._execute(riders)
                return
            self.last_progress = time.monotonic()
            ops, stop = self._drain(first)
            self._riders += [op for op in ops if op.ride_until]
            work = [op for op in ops if not op.ride_until]
            # Riders whose time is up run now, whatever else is queued: under constant
            # work the queue is never empty, and waiting for that (the branch above) kept
            # a claim that rides only with new events waiting for hundreds of ms.
            overdue = self._overdue()
            if overdue:
                work += overdue
            if self._missed and any(
                not self._missed.isdisjoint(op.rides_with or ()) for op in self._riders
            ):
                work += [_Op(kind, None, None, 0) for kind in self._missed]
                self._missed = set()
            if not work and not stop:
                continue
            boarding = self._boarding(work, everyone=stop)
            kicked = {op.fn for op in work if op.future is None}
            self._missed |= kicked - {kind for op in boarding for kind in op.rides_with or ()}
            self._execute([op for op in work if op.future is not None] + boarding)
            if self._idle is not None and time.monotonic() - last_idle >= self._idle_every:
                # Under constant load the queue never empties; upkeep must still run.
                self._run_idle(busy=True)
                last_idle = time.monotonic()
            if stop:
                return

    def _overdue(self) -> list[_Op[Any]]:
        """Take the riders whose ride is over out of the waiting ones."""
        if not self._riders:
            return []
        now = time.monotonic()
        due = [op for op in self._riders if op.ride_until <= now]
        if due:
            self._riders = [op for op in self._riders if op.ride_until > now]
            self._missed -= {kind for op in due for kind in op.rides_with or ()}
        return due

    def _boarding(self, work: list[_Op[Any]], *, everyone: bool) -> list[_Op[Any]]:
        """The riders that join a transaction doing `work`: one of each kind, so that a
        caller keeping two riders waiting (see WorkerPool) has one left for the
        transaction after this one, while the first is being asked again; and only those
        that wait for such work."""
        if everyone:
            boarding, self._riders = self._riders, []
            return boarding
        fns = {op.fn for op in work}
        kinds: set[int] = set()
        boarding = []
        waiting = []
        for rider in self._riders:
            if id(rider.fn) in kinds or (
                rider.rides_with is not None and rider.rides_with.isdisjoint(fns)
            ):
                waiting.append(rider)
            else:
                kinds.add(id(rider.fn))
                boarding.append(rider)
        self._riders = waiting
        return boarding

    def _run_idle(self, *, busy: bool) -> None:
        """Upkeep between transactions (checkpoints), told whether work is waiting."""
        assert self._idle is not None
        with contextlib.suppress(Exception):
            self._idle(self._con, busy)

    def _execute(self, ops: list[_Op[Any]]) -> None:
        if not ops:
            return
        groups: dict[tuple[int, int], list[_Op[Any]]] = {}
        for op in sorted(ops, key=lambda o: o.priority):
            groups.setdefault((op.priority, id(op.fn)), []).append(op)
        results: list[tuple[_Op[Any], Any, BaseException | None]] = []
        # Operations whose callers had their results before the commit (see _early).
        told: set[int] = set()
        before = self.transactions
        try:
            with self._gate:
                try:
                    self._con.execute("BEGIN TRANSACTION")
                    for group in groups.values():
                        values = group[0].fn(self._con, [op.payload for op in group])
                        done = list(zip(group, values, strict=True))
                        results.extend((op, value, None) for op, value in done)
                        early = self._early(done)
                        if early:
                            told.update(id(op) for op, _ in early)
                            self._resolve([(op, value, None) for op, value in early])
                    self._con.execute("COMMIT")
                except Exception:
                    self._rollback()
                    raise
            self.transactions += 1
            results = [item for item in results if id(item[0]) not in told]
        except Exception as exc:
            # An operation told before the commit is not tried again: what it wrote is gone
            # with the transaction, and the next one of its kind does it again.
            left = [op for op in ops if id(op) not in told]
            if len(ops) == 1:
                results = [(op, None, exc) for op in left]
            else:
                results = [self._alone(op) for op in left]
        self.operations += len(ops)
        self.last_progress = time.monotonic()
        self._resolve(results)
        if self.transactions > before and self._on_commit is not None:
            # After the callers' wake-up is queued: a producer's 202 goes first, then the
            # main writer's kick (microseconds apart).
            with contextlib.suppress(Exception):
                self._on_commit()

    def _early(self, done: list[tuple[_Op[Any], Any]]) -> list[tuple[_Op[Any], Any]]:
        """The operations of `done` whose results the batch function let go before the
        commit (common.before_commit, on the cursor's `early`): a scan's claims of the rows
        it has just inserted, whose attempts then start while the transaction commits."""
        early = getattr(self._con, "early", None)
        if not early:
            return []
        return [(op, value) for op, value in done if any(value is e for e in early)]

    def _alone(self, op: _Op[Any]) -> tuple[_Op[Any], Any, BaseException | None]:
        try:
            with self._gate:
                try:
                    self._con.execute("BEGIN TRANSACTION")
                    (value,) = op.fn(self._con, [op.payload])
                    self._con.execute("COMMIT")
                except Exception:
                    self._rollback()
                    raise
        except Exception as exc:
            return op, None, exc
        self.transactions += 1
        return op, value, None

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):
            self._con.execute("ROLLBACK")

    def _resolve(self, results: list[tuple[_Op[Any], Any, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op[Any], Any, Any]]] = {}
        for item in results:
            assert item[0].future is not None  # kicks are never executed
            by_loop.setdefault(item[0].future.get_loop(), []).append(item)
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[_Op[Any], Any, BaseException | None]]) -> None:
    for op, value, exc in items:
        if op.future is None or op.future.done():
            continue
        if exc is not None:
            op.future.set_exception(exc)
        else:
            op.future.set_result(value)
