"""The operations routes' answers (status, health, readiness, metrics, the document), split
from webhookd.api.models by subject; checked against live answers like every model there."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, RootModel

from webhookd.api.models import Response


class StatusCounts(Response):
    pending: int
    inflight: int
    delivered: int
    dead: int
    parked: int


class FifoBlocked(Response):
    """A fifo webhook held up by its head, which has failed (and keeps the rest waiting
    until it is delivered or dead)."""

    event_id: str = Field(description="the head: the oldest event not yet delivered or dead")
    blocked_since: datetime = Field(description="its first failed attempt as the head")
    blocked_seconds: float
    attempts: int = Field(description="the head's attempts, as its delivery counts them")


class QueueStatus(Response):
    """Counts by status and webhook, the oldest due delivery, the scanner, the workers."""

    model_config = ConfigDict(title="Status", extra="allow")

    by_status: StatusCounts
    by_webhook: dict[str, dict[str, int]]
    oldest_due_age_seconds: float | None
    scanner_lag_events: int
    scanner_cursor: int
    events_rejected: int = Field(
        default=0,
        description="events the scanner set aside, never to be delivered (PostgreSQL: "
        "outbox rows with a time out of range or data over admin.max_body_bytes; "
        "their reasons are in the schema's rejected_events table)",
    )
    settings_disagree: dict[str, list[str]] = Field(
        default_factory=dict,
        description="PostgreSQL: the live daemons on this queue whose settings that must "
        "agree (admin token, max_attempts, allow_private_destinations, ...) differ from "
        "this daemon's: daemon id: the setting names",
    )
    webhooks_active: int
    disabled_webhooks: dict[str, str | None] = Field(description="webhook id: the reason")
    fifo_blocked: dict[str, FifoBlocked] = Field(
        description="webhook id: the fifo webhooks whose head has failed"
    )
    workers_busy: int
    workers: int
    writer: dict[str, int]


class Health(Response):
    status: Literal["ok"]


class ReadinessChecks(Response):
    database: bool
    scanner: bool
    workers: bool


class Readiness(Response):
    status: Literal["ready", "not ready"]
    checks: ReadinessChecks


class MetricsText(RootModel[str]):
    """Prometheus text exposition format."""


class OpenApiDocument(RootModel[dict[str, Any]]):
    """This document."""
