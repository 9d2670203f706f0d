"""Prometheus metrics: one registry per daemon, so several daemons can share a process in tests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from webhookd.states import Status
from webhookd.store.base import Outcome, StatusReport
from webhookd.store.records import utcnow

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60)


def status_class(code: int | None) -> str:
    return "none" if code is None else f"{code // 100}xx"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.attempts = Counter(
            "webhookd_attempts",
            "Delivery attempts by outcome and HTTP status class",
            ["outcome", "status_class"],
            registry=r,
        )
        self.latency = Histogram(
            "webhookd_attempt_duration_seconds",
            "Duration of one delivery attempt, connect included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead = Counter("webhookd_dead", "Deliveries that used every attempt", registry=r)
        self.local_failures = Counter(
            "webhookd_local_failures",
            "Attempts not made for want of the daemon's own resources (file descriptors, "
            "buffers, memory): the rows wait, no attempt is counted",
            registry=r,
        )
        self.events_ingested = Counter(
            "webhookd_events_ingested", "Events accepted through the API", registry=r
        )
        self.auto_disabled = Counter(
            "webhookd_webhooks_auto_disabled",
            "Webhooks deactivated because every attempt failed for delivery.disable_after",
            registry=r,
        )
        self.queue_depth = Gauge(
            "webhookd_queue_depth", "Rows of the delivery queue by status", ["status"], registry=r
        )
        self.oldest_due_age = Gauge(
            "webhookd_oldest_due_age_seconds",
            "How long the oldest due delivery has waited",
            registry=r,
        )
        self.scanner_lag = Gauge(
            "webhookd_scanner_lag_events", "Events not yet scanned into the queue", registry=r
        )
        self.events_rejected = Gauge(
            "webhookd_events_rejected",
            "Events the scanner set aside, never to be delivered",
            registry=r,
        )
        self.webhooks_disabled = Gauge(
            "webhookd_webhooks_disabled", "Webhooks currently deactivated", registry=r
        )
        self.workers_busy = Gauge(
            "webhookd_workers_busy", "Attempts in flight right now", registry=r
        )
        self.fifo_blocked = Gauge(
            "webhookd_fifo_blocked_seconds",
            "How long a fifo webhook has been held up by its head (failed at least once, "
            "not yet delivered or dead); only webhooks held up now",
            ["webhook_id"],
            registry=r,
        )
        self._fifo_blocked: set[str] = set()
        for status in Status:
            self.queue_depth.labels(status=str(status))
        self._attempt_counters: dict[tuple[str, int | None], Counter] = {}
        self._status_at = float("-inf")

    def observe_attempt(self, outcome: Outcome) -> None:
        key = (outcome.outcome, outcome.status_code)
        counter = self._attempt_counters.get(key)
        if counter is None:
            # labels() hashes and locks on every call: once per (outcome, code) is enough.
            counter = self.attempts.labels(outcome.outcome, status_class(outcome.status_code))
            self._attempt_counters[key] = counter
        counter.inc()
        self.latency.observe(outcome.duration_ms / 1000.0)
        if outcome.status is Status.DEAD:
            self.dead.inc()

    def status_age(self) -> float:
        """Seconds since the queue figures were last taken."""
        return time.monotonic() - self._status_at

    def observe_status(self, report: StatusReport) -> None:
        self._status_at = time.monotonic()
        for status in Status:
            self.queue_depth.labels(status=str(status)).set(report.by_status.get(str(status), 0))
        self.oldest_due_age.set(report.oldest_due_age_seconds or 0.0)
        self.scanner_lag.set(report.scanner_lag_events)
        self.events_rejected.set(report.events_rejected)
        self.webhooks_disabled.set(len(report.disabled_webhooks))
        now = utcnow()
        for webhook_id, blocked in report.fifo_blocked.items():
            seconds = max(0.0, (now - blocked.since).total_seconds())
            self.fifo_blocked.labels(webhook_id=webhook_id).set(seconds)
        for webhook_id in self._fifo_blocked - report.fifo_blocked.keys():
            self.fifo_blocked.remove(webhook_id)
        self._fifo_blocked = set(report.fifo_blocked)

    def render(self) -> bytes:
        return generate_latest(self.registry)
