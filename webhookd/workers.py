"""The workers: claim due deliveries, POST them, hand each outcome to the store.

One claimer task keeps up to `delivery.workers` attempts in flight; the store caps
each webhook at `delivery.per_webhook_concurrency` so that a slow receiver holds at
most its own slots. Outcomes are submitted to the writer without waiting for the
commit; the claim that follows is queued behind them, so a slot is never reused
before its outcome is durable in the same or an earlier transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from webhookd import backoff, logs, signing
from webhookd.metrics import Metrics
from webhookd.sender import AttemptResult, Sender
from webhookd.states import Event, Status, Verdict, classify, outcome_event, transition
from webhookd.store.base import Claim, Outcome, Store

log = logs.get("webhookd.delivery")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    schedule: Sequence[float]
    jitter: float


def decide(claim: Claim, result: AttemptResult, policy: RetryPolicy, now: datetime) -> Outcome:
    """The outcome of one attempt: the row's next state and when to try again."""
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
    )


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    return signing.secret_key(secret)


class WorkerPool:
    def __init__(
        self,
        store: Store,
        sender: Sender,
        metrics: Metrics,
        *,
        workers: int,
        per_webhook: int,
        claim_batch: int,
        lease: float,
        poll_interval: float,
        policy: RetryPolicy,
    ) -> None:
        self._store = store
        self._sender = sender
        self._metrics = metrics
        self.size = workers
        self._per_webhook = per_webhook
        self._claim_batch = claim_batch
        self._lease = lease
        self._poll_interval = poll_interval
        self._policy = policy
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._attempts: dict[asyncio.Task[None], Claim] = {}
        self._pending_writes: set[asyncio.Future[None]] = set()
        self._run_task: asyncio.Task[None] | None = None
        self.running = False

    @property
    def busy(self) -> int:
        return len(self._attempts)

    def wake(self, _: int = 0) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Claim while slots are free; sleep until woken or the next poll otherwise."""
        self.running = True
        self._run_task = asyncio.current_task()
        try:
            while not self._stopping.is_set():
                free = self.size - len(self._attempts)
                claims: list[Claim] = []
                if free > 0:
                    self._wake.clear()
                    try:
                        claims = await self._store.claim(
                            min(free, self._claim_batch), self._per_webhook, self._lease
                        )
                    except Exception as exc:
                        log.error("claim failed", error=str(exc))
                if self._stopping.is_set():
                    if claims:
                        await self._store.release([(c.webhook_id, c.event_id) for c in claims])
                    break
                for claim in claims:
                    task = asyncio.create_task(self._attempt(claim))
                    self._attempts[task] = claim
                    task.add_done_callback(self._finished)
                self._metrics.workers_busy.set(len(self._attempts))
                if len(claims) == min(free, self._claim_batch) and claims:
                    continue  # more may be due right now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
        finally:
            self.running = False

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._attempts.pop(task, None)
        self._wake.set()

    async def _attempt(self, claim: Claim) -> None:
        timestamp = int(time.time())
        headers = signing.headers(
            [_key(s) for s in claim.secrets], claim.event_id, timestamp, claim.body
        )
        result = await self._sender.post(claim.url, claim.body, headers)
        outcome = decide(claim, result, self._policy, datetime.now(UTC).replace(tzinfo=None))
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
        write = asyncio.ensure_future(self._store.record(outcome))
        self._pending_writes.add(write)
        write.add_done_callback(functools.partial(self._written, outcome))

    def _written(self, outcome: Outcome, write: asyncio.Future[None]) -> None:
        self._pending_writes.discard(write)
        if write.cancelled():
            return
        exc = write.exception()
        if exc is not None:
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
        self._wake.set()
        if self._run_task is not None and not self._run_task.done():
            # It may be holding a fresh claim; it releases it before it returns.
            await asyncio.wait([self._run_task])
        if self._attempts:
            await asyncio.wait(list(self._attempts), timeout=grace)
        unfinished = dict(self._attempts)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
        if self._pending_writes:
            await asyncio.gather(*list(self._pending_writes), return_exceptions=True)
        keys = [(c.webhook_id, c.event_id) for c in unfinished.values()]
        if keys:
            released = await self._store.release(keys)
            log.info("released unfinished deliveries", count=released)
