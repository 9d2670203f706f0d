"""A worker pool over a real store with small, fixed settings, for tests that drive it."""

from __future__ import annotations

from webhookd.metrics import Metrics
from webhookd.sender import Sender
from webhookd.store.base import Notifier, Store
from webhookd.workers import RetryPolicy, WorkerPool


def pool_for(
    store: Store,
    sender: Sender,
    metrics: Metrics | None = None,
    max_attempts: int = 2,
    poll_interval: float = 0.05,
    notifier: Notifier | None = None,
) -> WorkerPool:
    """4 workers, 2 at once per webhook, claims of 10, retries at once (no jitter)."""
    return WorkerPool(
        store,
        sender,
        metrics or Metrics(),
        workers=4,
        per_webhook=2,
        claim_batch=10,
        lease=30.0,
        timeout=5.0,
        poll_interval=poll_interval,
        policy=RetryPolicy(max_attempts=max_attempts, schedule=[0.0], jitter=0.0),
        notifier=notifier,
    )
