"""The workers: claim due deliveries, POST them, hand each outcome to the store.

One claimer task keeps up to `delivery.workers` attempts in flight, at most
`delivery.per_webhook_concurrency` of them to one webhook (or the webhook's own
`max_in_flight`; one for a fifo webhook), so that a slow receiver holds
at most its own slots; a webhook whose last attempt got no answer at all (a timeout, a
refused or reset connection) gets one attempt at a time until one is answered, so that
receivers that hang hold one slot each, not the pool (and the rows claimed ahead for one
go back to pending). Outcomes are submitted to the writer without waiting for the commit;
the claim that follows is queued behind them, so a slot is never reused before its
outcome is durable in the same or an earlier transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from webhookd import backoff, logs, signing, tracing
from webhookd.attempts import AttemptResult
from webhookd.metrics import Metrics
from webhookd.queue.pacing import running_cap
from webhookd.senders import AttemptSender
from webhookd.states import Event, Status, Verdict, classify, outcome_event, transition
from webhookd.store.base import (
    Claim,
    ClaimRequest,
    Notifier,
    Outcome,
    ScanResult,
    Store,
    sleep_until_work,
)
from webhookd.tracing import Tracer

log = logs.get("webhookd.delivery")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    schedule: Sequence[float]
    jitter: float


# A local failure (the daemon's own resources ran out) puts the row back this many seconds
# ahead, give or take LOCAL_RETRY_JITTER of it: soon, but not in a hot loop.
LOCAL_RETRY_DELAY = 2.0
LOCAL_RETRY_JITTER = 0.5
# When deciding an attempt's outcome itself fails, a failure retried after this long.
FALLBACK_RETRY_DELAY = 60.0
# Longest exception text kept in an internal error.
MAX_INTERNAL_ERROR = 500


def decide(claim: Claim, result: AttemptResult, policy: RetryPolicy, now: datetime) -> Outcome:
    """The outcome of one attempt: the row's next state and when to try again.

    A local failure (``result.local_failure``) is not an attempt: the row goes back to
    pending a few seconds ahead with the same attempt number next time (not spent)."""
    if result.local_failure:
        delay = backoff.jittered(LOCAL_RETRY_DELAY, LOCAL_RETRY_JITTER)
        return Outcome(
            webhook_id=claim.webhook_id,
            event_id=claim.event_id,
            attempt=claim.attempt,
            status=transition(Status.INFLIGHT, Event.RELEASE),
            next_attempt_at=now + timedelta(seconds=delay),
            attempted_at=now,
            duration_ms=result.duration_ms,
            status_code=None,
            error=result.error,
            response_excerpt="",
            outcome="local_failure",
            claimed_until=claim.claimed_until,
            spent=False,
            seq=claim.seq,
        )
    classified = classify(result.status_code)
    event = outcome_event(classified.verdict, claim.budget_attempt, policy.max_attempts)
    status = transition(Status.INFLIGHT, event)
    next_at = None
    if event is Event.FAILURE:
        retry_after = result.retry_after if classified.honour_retry_after else None
        delay = backoff.retry_delay(
            policy.schedule, claim.budget_attempt, policy.jitter, retry_after
        )
        next_at = now + timedelta(seconds=delay)
    label = {
        Event.SUCCESS: "delivered",
        Event.FAILURE: "retry",
        Event.EXHAUSTED: "dead",
        Event.GONE: "gone",
    }[event]
    return Outcome(
        webhook_id=claim.webhook_id,
        event_id=claim.event_id,
        attempt=claim.attempt,
        status=status,
        next_attempt_at=next_at,
        attempted_at=now,
        duration_ms=result.duration_ms,
        status_code=result.status_code,
        error=result.error,
        response_excerpt=result.response_excerpt,
        outcome=label,
        deactivate_webhook=classified.verdict is Verdict.GONE,
        claimed_until=claim.claimed_until,
        seq=claim.seq,
    )


def internal_error(exc: Exception, duration_ms: float) -> AttemptResult:
    """A failed attempt for an exception raised inside webhookd while attempting (a bug,
    or a stored value that cannot be sent): recorded and retried like any failure."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > MAX_INTERNAL_ERROR:
        text = text[: MAX_INTERNAL_ERROR - 3] + "..."
    return AttemptResult(None, f"internal error: {text}", duration_ms, "", None)


def decide_failure(
    claim: Claim, result: AttemptResult, policy: RetryPolicy, now: datetime
) -> Outcome:
    """`decide` for a failure that must get an outcome even if `decide` raises: then a
    retry after FALLBACK_RETRY_DELAY, or dead once the budget is used."""
    try:
        return decide(claim, result, policy, now)
    except Exception:
        exhausted = claim.budget_attempt >= policy.max_attempts
        return Outcome(
            webhook_id=claim.webhook_id,
            event_id=claim.event_id,
            attempt=claim.attempt,
            status=Status.DEAD if exhausted else Status.PENDING,
            next_attempt_at=None if exhausted else now + timedelta(seconds=FALLBACK_RETRY_DELAY),
            attempted_at=now,
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error=result.error,
            response_excerpt=result.response_excerpt,
            outcome="dead" if exhausted else "retry",
            claimed_until=claim.claimed_until,
            seq=claim.seq,
        )


def tracing_attributes(outcome: Outcome) -> dict[str, str | int]:
    """What an attempt's span says of its outcome: no error text (it may quote a
    receiver's answer), no body, no header."""
    attributes: dict[str, str | int] = {"webhookd.outcome": outcome.outcome}
    if outcome.status_code is not None:
        attributes["http.response.status_code"] = outcome.status_code
    return attributes


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> signing.Key:
    return signing.secret_key(secret)


MAX_PREFETCH = 128
# A receiver that answered within this may have rows claimed ahead of its cap.
FAST_ENOUGH_MS = 500.0
# Seconds over which the start rate is counted, and the weight of each new figure.
RATE_WINDOW = 0.1
SMOOTHING = 0.3
# Memory bound on rows claimed but not started, whatever the receivers do.
MAX_QUEUED_PER_WORKER = 64


def prefetch_depth(lease: float, timeout: float) -> int:
    """How many rounds of attempts per webhook may wait claimed in memory.

    A claimed row waits at most depth x timeout before its attempt starts, and the
    attempt takes at most another timeout: the lease must cover both, or a live row
    would be rescued as if its process had died.
    """
    return max(1, min(MAX_PREFETCH, int(lease // timeout) - 1))


class WorkerPool:
    """Claims in batches, then runs attempts with two caps held in memory: `workers` in
    all and `per_webhook` for each webhook. For a webhook that answers fast, rows are
    claimed up to `prefetch` rounds ahead and wait in its local queue, so one claim feeds
    many attempts; any other webhook holds one round at most, so a hanging receiver
    never parks rows in memory that other webhooks' claims would wait behind.
    """

    def __init__(
        self,
        store: Store,
        sender: AttemptSender,
        metrics: Metrics,
        *,
        workers: int,
        per_webhook: int,
        claim_batch: int,
        lease: float,
        timeout: float,
        poll_interval: float,
        policy: RetryPolicy,
        tracer: Tracer | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
        # None: no spans exported (an attempt of a traced event still sends a traceparent).
        self._tracer = tracer
        self._sender = sender
        self._metrics = metrics
        self.size = workers
        self._per_webhook = per_webhook
        self.prefetch = prefetch_depth(lease, timeout)
        self._claim_batch = claim_batch
        self._lease = lease
        self._poll_interval = poll_interval
        self._policy = policy
        # One wake-up per claimer: work that one claim can take wakes the first only
        # (a slot freed), work of unknown size wakes both.
        self._wakes = (asyncio.Event(), asyncio.Event())
        self._stopping = asyncio.Event()
        self._fast: dict[str, bool] = {}
        self._silent: set[str] = set()  # last attempt got no answer: one at a time
        # What the claims said of each webhook: its own cap (max_in_flight, 1 for fifo),
        # and whether it is paced (fifo or rate-limited: never claimed ahead).
        self._caps: dict[str, int] = {}
        self._paced: set[str] = set()
        self._resources_short = False  # the last attempt failed for want of local resources
        self._attempts: dict[asyncio.Task[None], tuple[Claim, float]] = {}
        self._running: dict[str, int] = {}
        self._queued: OrderedDict[str, deque[Claim]] = OrderedDict()
        self._n_queued = 0
        self._pending_writes: set[asyncio.Future[bool]] = set()
        self._releases: set[asyncio.Task[int]] = set()
        # Smoothed figures for the low water mark: attempts started per second and
        # seconds from asking for a claim to having it.
        self._asking = 0  # rows asked for by claims not yet answered
        self._short_of_room = 0  # claimers waiting because the pool has no room
        self._start_rate = 0.0
        self._claim_seconds = 0.0
        self._rate_since = time.monotonic()
        self._rate_count = 0
        self._run_task: asyncio.Task[None] | None = None
        self.running = False

    @property
    def busy(self) -> int:
        return len(self._attempts)

    def wake(self, _: int = 0) -> None:
        for wake in self._wakes:
            wake.set()

    def _low_water(self) -> int:
        """Refill below this many ready rows: what the workers start while a claim is on
        its way (twice, for a margin), and never less than half a round of workers."""
        return max(self.size // 2, int(2 * self._start_rate * self._claim_seconds))

    def _room(self) -> int:
        """Rows to claim now: refill when the rows ready to start run below the low
        water mark, up to a claim batch beyond one round. Rows stuck behind a receiver
        that stopped answering are not ready: counting them would stop claims for every
        other webhook until that receiver's attempts time out."""
        if self._n_queued >= MAX_QUEUED_PER_WORKER * self.size:
            return 0
        ready = self._n_queued
        low = self._low_water()
        if ready > low:
            ready -= self._stuck()
            if ready > low:
                return 0
        held = len(self._attempts) + ready + self._asking
        return max(0, min(self._claim_batch, self.size + self._claim_batch - held))

    def _cap(self, webhook_id: str) -> int:
        """Attempts a webhook may have running at once: its share (its own max_in_flight,
        one for fifo, else per_webhook), or one while its receiver does not answer (as a
        circuit breaker half-open: one probe at a time)."""
        own = self._caps.get(webhook_id)
        return running_cap(own, self._per_webhook, silent=webhook_id in self._silent)

    def _learn(self, claims: list[Claim]) -> None:
        """A webhook's own cap and pace, as its latest claim says (they may change)."""
        for claim in claims:
            w = claim.webhook_id
            if claim.cap is None:
                self._caps.pop(w, None)
            else:
                self._caps[w] = claim.cap
            if claim.paced:
                self._paced.add(w)
            else:
                self._paced.discard(w)

    def _stuck(self) -> int:
        """Rows queued for webhooks with every slot busy and a slow receiver."""
        now = time.monotonic()
        slow = {
            claim.webhook_id
            for claim, started in self._attempts.values()
            if now - started > FAST_ENOUGH_MS / 1000
        }
        return sum(
            len(waiting)
            for webhook_id, waiting in self._queued.items()
            if self._running.get(webhook_id, 0) >= self._cap(webhook_id)
            and (webhook_id in slow or not self._fast.get(webhook_id, False))
        )

    async def run(self) -> None:
        """Claim while there is room; sleep until woken or the next poll otherwise.

        Two claimers keep two claims asked: an engine that groups work into transactions
        (DuckDB) answers one claim per transaction, so the one after a transaction that
        took a claim still has one while that claim's answer travels back and the next is
        asked. A claim that brings fewer rows than asked for sleeps until this daemon
        frees a slot or enqueues rows, the store reports new rows, or the poll interval.
        """
        self.running = True
        self._run_task = asyncio.current_task()
        try:
            await asyncio.gather(self._claimer(), self._claimer(follower=True))
        finally:
            self.running = False

    async def _claimer(self, *, follower: bool = False) -> None:
        wake = self._wakes[1 if follower else 0]
        while not self._stopping.is_set():
            room = self._room()
            if room == 0:
                wake.clear()
                self._short_of_room += 1
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), self._poll_interval)
                finally:
                    self._short_of_room -= 1
                continue
            # Cleared before the claim: a wake-up during it is not lost.
            woken = wake.is_set()
            wake.clear()
            asked = time.monotonic()
            claims: list[Claim] = []
            # What the claimer waiting for new events asks is not counted: under a backlog
            # it would hold back the other claimer's room for nothing.
            asking = 0 if follower else room
            self._asking += asking
            try:
                claims = await self._store.claim(room, self._per_webhook, self._lease, self._deep())
            except Exception as exc:  # the next poll tries again
                log.error("claim failed", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._poll_interval)
            else:
                if woken:
                    self._claim_seconds += (
                        time.monotonic() - asked - self._claim_seconds
                    ) * SMOOTHING
            finally:
                self._asking -= asking
            if self._stopping.is_set():
                if claims:
                    await self._store.release([(c.webhook_id, c.event_id) for c in claims])
                return
            self._accept(claims)
            if len(claims) < room:
                # Nothing more is due now. The rows this claim brought are started first:
                # an engine whose notifier waits (PostgreSQL) would hold them here.
                await sleep_until_work(self._notifier, "deliveries", wake, self._poll_interval)

    def _accept(self, claims: list[Claim]) -> None:
        """Fresh claims (a claimer's or a scan's) into the queues, and attempts started."""
        self._learn(claims)
        kept, extra = self._within_cap(claims)
        if extra:
            self._give_back(extra)
        for claim in kept:
            self._queued.setdefault(claim.webhook_id, deque()).append(claim)
        self._n_queued += len(kept)
        self._dispatch()

    def offer(self) -> ClaimRequest | None:
        """What a scan may claim for this pool (Store.scan's ClaimRequest): what a claimer
        would ask for now. Not counted as asked, as the follower claimer's ask is not: a
        scan mostly waits for new events (on DuckDB in the writer, up to a poll interval),
        and counting it would hold back the claimers' room for nothing. Both asking at
        once claim no more per webhook than its cap allows (the store counts every
        inflight row), and _room stops both once enough rows wait in memory."""
        if self._stopping.is_set():
            return None
        room = self._room()
        if room == 0:
            return None
        return ClaimRequest(room, self._per_webhook, self._lease, self._deep(), early=True)

    async def take(self, result: ScanResult) -> None:
        """A scan's result. Its claims are taken as a claimer's are; once the pool is
        stopping they go back to pending at once. The claimers are woken for the rows it
        enqueued only if it may have left some due (ScanResult.left_due): else each row
        it did not claim waits for a slot, its fifo head or its rate limit's slot, as
        after a claim that took less than it asked, and waking the claimers would only
        cost a claim that finds nothing."""
        if self._stopping.is_set():
            if result.claims:
                try:
                    await self._store.release([(c.webhook_id, c.event_id) for c in result.claims])
                except Exception as exc:  # they stay inflight; the lease re-drives them
                    log.error("giving back claimed rows failed", error=str(exc))
            return
        if result.claims:
            self._accept(result.claims)
        if result.enqueued and result.left_due:
            self.wake()

    def _deep(self) -> dict[str, int]:
        """Rows each webhook may hold claimed, where that differs from one round: those
        whose receiver answered fast last time `prefetch` rounds (claims run ahead of their
        cap), those whose receiver did not answer one row, so that rows never wait in
        memory behind a receiver that hangs and stay visible as pending. A paced webhook
        (fifo, rate-limited) is never claimed ahead: the store gives it what may start."""
        caps = {
            w: self._cap(w) * self.prefetch
            for w, fast in self._fast.items()
            if fast and w not in self._paced
        }
        caps.update((w, 1) for w in self._silent)
        return caps

    def _dispatch(self) -> None:
        """Start attempts round-robin over webhooks, within both caps."""
        skipped = 0
        while self._queued and len(self._attempts) < self.size and skipped < len(self._queued):
            webhook_id, waiting = next(iter(self._queued.items()))
            self._queued.move_to_end(webhook_id)
            if self._running.get(webhook_id, 0) >= self._cap(webhook_id):
                skipped += 1
                continue
            skipped = 0
            claim = waiting.popleft()
            self._n_queued -= 1
            if not waiting:
                del self._queued[webhook_id]
            self._running[webhook_id] = self._running.get(webhook_id, 0) + 1
            task = asyncio.create_task(self._attempt(claim))
            self._attempts[task] = (claim, time.monotonic())
            task.add_done_callback(self._finished)
            self._rate_count += 1
        self._metrics.workers_busy.set(len(self._attempts))
        now = time.monotonic()
        if now - self._rate_since >= RATE_WINDOW:
            rate = self._rate_count / (now - self._rate_since)
            self._start_rate += (rate - self._start_rate) * SMOOTHING
            self._rate_since, self._rate_count = now, 0

    def _finished(self, task: asyncio.Task[None]) -> None:
        entry = self._attempts.pop(task, None)
        if entry is not None:
            claim = entry[0]
            left = self._running.get(claim.webhook_id, 1) - 1
            if left:
                self._running[claim.webhook_id] = left
            else:
                self._running.pop(claim.webhook_id, None)
        if not self._stopping.is_set():
            self._dispatch()
            # Only a claimer that waits for room gains by this slot. One that slept after a
            # short claim gains nothing yet: the row still holds its webhook's slot in the
            # database until its outcome commits, and that wakes it (_written). Waking it
            # here too cost an empty claim transaction per delivery on PostgreSQL.
            if self._short_of_room:
                self.wake()

    async def _attempt(self, claim: Claim) -> None:
        """Sign, POST, decide and record one attempt. Whatever goes wrong inside (a bug,
        a stored id no header can carry), the attempt ends with an outcome: a failure
        with an `internal error: ...` text, counted and retried like any other.
        Cancellation (shutdown) propagates: the pool releases those rows."""
        if self._tracer is not None:
            with self._tracer.attempt(claim.traceparent, claim.webhook_id, claim.attempt) as span:
                outcome = await self._attempt_traced(claim, span.traceparent)
                span.attributes.update(tracing_attributes(outcome))
        else:
            await self._attempt_traced(
                claim, None if claim.traceparent is None else tracing.child(claim.traceparent)
            )

    async def _attempt_traced(self, claim: Claim, traceparent: str | None) -> Outcome:
        started = time.perf_counter()
        internal = False
        try:
            timestamp = int(time.time())
            headers = signing.headers(
                [_key(s) for s in claim.secrets], claim.event_id, timestamp, claim.body
            )
            if traceparent is not None:
                headers["traceparent"] = traceparent
            result = await self._sender.post(claim.url, claim.body, headers, claim.options)
            outcome = decide(claim, result, self._policy, datetime.now(UTC).replace(tzinfo=None))
        except Exception as exc:
            internal = True
            result = internal_error(exc, (time.perf_counter() - started) * 1000.0)
            now = datetime.now(UTC).replace(tzinfo=None)
            outcome = decide_failure(claim, result, self._policy, now)
            log.error(
                "internal error during an attempt",
                webhook_id=claim.webhook_id,
                event_id=claim.event_id,
                attempt=claim.attempt,
                error=result.error,
            )
        if result.local_failure:
            self._short_of_resources(claim, result)
        else:
            if not internal:
                self._heard_from(claim.webhook_id, result)
            self._metrics.observe_attempt(outcome)
            log.info(
                "attempt",
                webhook_id=claim.webhook_id,
                event_id=claim.event_id,
                attempt=claim.attempt,
                status_code=result.status_code,
                duration_ms=round(result.duration_ms, 1),
                outcome=outcome.outcome,
                error=result.error,
            )
        if outcome.deactivate_webhook:
            log.warning(
                "webhook deactivated: the endpoint answered 410 Gone",
                webhook_id=claim.webhook_id,
            )
        try:
            write = self._store.record(outcome)
        except Exception as exc:  # the row stays inflight; its lease re-drives it
            self._written_failed(outcome, exc)
            return outcome
        self._pending_writes.add(write)
        write.add_done_callback(functools.partial(self._written, outcome))
        return outcome

    def _heard_from(self, webhook_id: str, result: AttemptResult) -> None:
        """What an attempt that reached the network says of its receiver (fast, or silent:
        one attempt at a time), and that the daemon's own resources work again."""
        if self._resources_short:
            self._resources_short = False
            log.warning("local resources work again; deliveries resume")
        self._fast[webhook_id] = (
            result.status_code is not None and result.duration_ms < FAST_ENOUGH_MS
        )
        if result.status_code is None:
            if webhook_id not in self._silent:
                self._silent.add(webhook_id)
                self._release_queued(webhook_id)
        else:
            self._silent.discard(webhook_id)

    def _short_of_resources(self, claim: Claim, result: AttemptResult) -> None:
        """A local failure says nothing of the receiver: counted apart, logged once per
        episode (until an attempt gets through again), the row put back unspent."""
        self._metrics.local_failures.inc()
        if not self._resources_short:
            self._resources_short = True
            log.error(
                "out of local resources: deliveries wait without spending attempts",
                webhook_id=claim.webhook_id,
                event_id=claim.event_id,
                error=result.error,
            )
        log.debug(
            "attempt not made",
            webhook_id=claim.webhook_id,
            event_id=claim.event_id,
            attempt=claim.attempt,
            error=result.error,
        )

    def _release_queued(self, webhook_id: str) -> None:
        """Give back the rows claimed ahead for a webhook that stopped answering: one at
        a time they would wait up to a timeout each, longer than their lease, and as
        `pending` they show what they are."""
        waiting = self._queued.pop(webhook_id, None)
        if waiting:
            self._n_queued -= len(waiting)
            self._give_back(list(waiting))

    def _within_cap(self, claims: list[Claim]) -> tuple[list[Claim], list[Claim]]:
        """Fresh claims split into those to keep and those beyond a silent webhook's one
        attempt: a claim asked before the webhook fell silent came back with a full share."""
        kept: list[Claim] = []
        extra: list[Claim] = []
        allowed: dict[str, int] = {}
        for claim in claims:
            w = claim.webhook_id
            if w in self._silent:
                if w not in allowed:
                    have = self._running.get(w, 0) + len(self._queued.get(w, ()))
                    allowed[w] = max(0, self._cap(w) - have)
                if allowed[w] == 0:
                    extra.append(claim)
                    continue
                allowed[w] -= 1
            kept.append(claim)
        return kept, extra

    def _give_back(self, claims: list[Claim]) -> None:
        """Release claimed rows to pending. If that fails they stay inflight, and the
        lease rescuer re-drives them."""
        task = asyncio.create_task(
            self._store.release([(c.webhook_id, c.event_id) for c in claims])
        )
        self._releases.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[int]) -> None:
        self._releases.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("giving back claimed rows failed", error=str(task.exception()))

    def _written(self, outcome: Outcome, write: asyncio.Future[bool]) -> None:
        self._pending_writes.discard(write)
        if write.cancelled():
            return
        exc = write.exception()
        if exc is not None:
            self._written_failed(outcome, exc)
        elif not self._stopping.is_set() and write.result():
            # An engine that counts a webhook's cap in the database (PostgreSQL, across
            # daemons) sees the slot free only once the outcome is committed: a claim
            # asked when the attempt ended found it still taken, and would otherwise
            # sleep until the next poll. One slot: one claim takes it, the first claimer's.
            # Unless no row of the webhook is due (the store says): at low rates, where
            # the scans claim every row, that claim found nothing, one per delivery.
            self._wakes[0].set()

    def _written_failed(self, outcome: Outcome, exc: BaseException) -> None:
        # The row stays inflight; the lease rescuer re-drives it. Nothing is lost.
        log.error(
            "recording an outcome failed; the lease will re-drive it",
            webhook_id=outcome.webhook_id,
            event_id=outcome.event_id,
            error=str(exc),
        )

    async def shutdown(self, grace: float) -> None:
        """Stop claiming; let attempts finish for `grace` seconds; release the rest."""
        self._stopping.set()
        self.wake()
        if self._run_task is not None and not self._run_task.done():
            # It may be holding a fresh claim; it releases it before it returns.
            await asyncio.wait([self._run_task])
        never_started = [c for waiting in self._queued.values() for c in waiting]
        self._queued.clear()
        self._n_queued = 0
        if self._attempts:
            await asyncio.wait(list(self._attempts), timeout=grace)
        unfinished = dict(self._attempts)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._pending_writes or self._releases:
            await asyncio.gather(
                *list(self._pending_writes), *list(self._releases), return_exceptions=True
            )
        keys = [
            (c.webhook_id, c.event_id)
            for c in [*(entry[0] for entry in unfinished.values()), *never_started]
        ]
        if keys:
            released = await self._store.release(keys)
            log.info("released unfinished deliveries", count=released)
