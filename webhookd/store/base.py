"""The storage interface the scanner, workers and API use; no database specifics here.

A PostgreSQL implementation (claims with FOR UPDATE SKIP LOCKED, several daemons
sharing one queue) implements the same Protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from webhookd.events import NewEvent
from webhookd.states import Status


class StoreUnavailable(Exception):
    """The database cannot be opened (held by another process, unwritable, not a database)."""


class NotFound(Exception):
    pass


class EventConflict(Exception):
    """An event id was posted again with other content."""

    def __init__(self, event_ids: list[str]) -> None:
        super().__init__(f"event id(s) already used with other content: {', '.join(event_ids)}")
        self.event_ids = event_ids

    def __reduce__(self) -> tuple[type[EventConflict], tuple[list[str]]]:
        return EventConflict, (self.event_ids,)


@dataclass(frozen=True, slots=True)
class IngestResult:
    ids: list[str]
    inserted: int


@dataclass(frozen=True, slots=True)
class ScanResult:
    events: int
    enqueued: int
    cursor: int


@dataclass(frozen=True, slots=True)
class Claim:
    webhook_id: str
    event_id: str
    attempt: int  # the number this attempt will have in the log
    budget_attempt: int  # attempts counted against max_attempts (reset by redrive/replay)
    url: str
    secrets: tuple[str, ...]  # every secret that signs now (two during rotation)
    body: bytes
    # The lease this claim set: its outcome applies only while the row still holds it, so
    # a late outcome of an earlier, rescued claim cannot overwrite a newer claim.
    claimed_until: datetime | None = None

    def __reduce__(self) -> tuple[type[Claim], tuple[Any, ...]]:
        # Claims and outcomes cross to the database process by the thousand: positional
        # pickling costs a third of what a slotted dataclass does by default.
        return Claim, tuple(getattr(self, name) for name in self.__slots__)


@dataclass(frozen=True, slots=True)
class Outcome:
    webhook_id: str
    event_id: str
    attempt: int
    status: Status  # the row's next state
    next_attempt_at: datetime | None
    attempted_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str
    outcome: str  # log label: delivered, retry, dead, gone
    deactivate_webhook: bool = False  # 410: the receiver asked to stop
    claimed_until: datetime | None = None  # the claim's lease (see Claim)

    def __reduce__(self) -> tuple[type[Outcome], tuple[Any, ...]]:
        return Outcome, tuple(getattr(self, name) for name in self.__slots__)


@dataclass(frozen=True, slots=True)
class WebhookPatch:
    url: str | None = None
    event_types: list[str] | None = None
    active: bool | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    webhook_id: str | None = None
    event_id: str | None = None
    status: Status | None = None


@dataclass(slots=True)
class Page:
    items: list[dict[str, Any]]
    next: str | None = None


@dataclass(frozen=True, slots=True)
class Pruned:
    queue_rows: int
    log_rows: int


@dataclass(slots=True)
class StatusReport:
    by_status: dict[str, int] = field(default_factory=dict)
    by_webhook: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_due_age_seconds: float | None = None
    scanner_lag_events: int = 0
    scanner_cursor: int = 0
    latest_seq: int = 0
    webhooks_active: int = 0
    disabled_webhooks: dict[str, str | None] = field(default_factory=dict)


class Store(Protocol):
    """Every operation is atomic; writes are durable once the awaitable returns."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def healthy(self) -> bool:
        """The database is open and its writer is making progress (for the watchdog)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters of the storage engine (transactions, operations), for status."""
        ...

    # start-up and upkeep
    async def rescue_orphans(self) -> int:
        """Return every row a dead process left inflight to pending, before any claim."""
        ...

    async def rescue_expired(self, now: datetime) -> int: ...
    async def prune(
        self, delivered_before: datetime, log_before: datetime, batch: int
    ) -> Pruned: ...
    async def auto_disable(self, failing_before: datetime) -> list[str]: ...
    async def checkpoint(self) -> None: ...

    # the data path
    async def ingest(self, events: list[NewEvent]) -> IngestResult: ...
    async def scan(self, batch_size: int, *, ride: float = 0.0) -> ScanResult:
        """Enqueue the next events after the cursor. With `ride` > 0 the scan may wait up to
        that long to share a transaction with other work (see claim)."""
        ...

    async def claim(
        self,
        limit: int,
        per_webhook: int,
        lease: float,
        caps: Mapping[str, int] | None = None,
        *,
        ride: float = 0.0,
        with_new_events: bool = False,
    ) -> list[Claim]:
        """Up to `limit` due rows, oldest first, no webhook left holding more inflight rows
        than its entry in `caps` (default `per_webhook`); they become inflight.

        With `ride` > 0 the claim may wait up to that long for other work to commit with:
        a poller's claim then costs no transaction of its own, and rides with the ingest
        and scan of new events, so they are claimed in the commit that accepts them. With
        `with_new_events` it rides only with transactions that ingest events."""
        ...

    def record(self, outcome: Outcome) -> asyncio.Future[None]:
        """Queue an outcome for the next group commit; the future settles once durable."""
        ...

    async def release(self, keys: list[tuple[str, str]]) -> int: ...

    # webhooks
    async def create_webhook(
        self, url: str, event_types: list[str], secret: str, description: str
    ) -> dict[str, Any]: ...
    async def get_webhook(self, webhook_id: str) -> dict[str, Any]: ...
    async def get_webhook_secrets(self, webhook_id: str) -> tuple[str, tuple[str, ...]]:
        """(url, signing secrets): for the test route only, never for a listing."""
        ...

    async def list_webhooks(self, limit: int, after: str | None) -> Page: ...
    async def update_webhook(self, webhook_id: str, patch: WebhookPatch) -> dict[str, Any]: ...
    async def delete_webhook(self, webhook_id: str) -> None: ...
    async def rotate_secret(self, webhook_id: str, secret: str, grace: float) -> dict[str, Any]: ...

    # operators
    async def list_deliveries(
        self, filt: DeliveryFilter, limit: int, after: str | None
    ) -> Page: ...
    async def list_attempts(self, webhook_id: str, event_id: str) -> list[dict[str, Any]]: ...
    async def redrive(
        self, status: Status, webhook_id: str | None, since: datetime | None
    ) -> int: ...
    async def replay(self, event_id: str, webhook_id: str | None) -> int: ...
    async def status(self) -> StatusReport: ...
