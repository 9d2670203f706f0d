"""The storage interface the scanner, workers, upkeep and API use; no database specifics.

Two engines implement it: DuckDB (store/duckdb/, run in a child process by
store/duckdb/remote.py), one daemon on one file; and PostgreSQL (store/postgres/), several
daemons on one queue. tests/test_store.py and tests/test_queue_properties.py are the
conformance suite both pass.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from webhookd import network
from webhookd.events import NewEvent
from webhookd.network import DeliveryOptions
from webhookd.states import Status
from webhookd.store.records import WebhookRecord, WebhookSecrets
from webhookd.tenants import StoredToken


class StoreUnavailable(Exception):
    """The database cannot be opened (held by another process, unwritable, not a database)."""


class StorageFull(StoreUnavailable):
    """The database's disk (DuckDB's file system, or the PostgreSQL server's) is full:
    nothing of the call was written, and the same call may succeed once space is freed.
    The API answers it with 503 `storage_full`."""

    def __reduce__(self) -> tuple[type[StorageFull], tuple[str]]:
        # It crosses from the database process to the daemon (store/duckdb/remote.py).
        return StorageFull, (str(self),)


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
class ClaimRequest:
    """What a scan may claim of the rows it enqueues (Store.scan): Store.claim's arguments,
    as the worker pool would have passed them to a claim of its own."""

    limit: int
    per_webhook: int
    lease: float
    caps: Mapping[str, int] = field(default_factory=dict)
    # The caller (the daemon's scanner) may have the claims of a scan of a few events
    # before its transaction commits, so that their attempts do not wait for it: a reader
    # may then not see their rows yet. The rows exist only in that transaction; if it
    # never commits, the events are scanned again (a duplicate attempt, never a lost one).
    early: bool = False


@dataclass(frozen=True, slots=True)
class ScanResult:
    events: int
    enqueued: int
    cursor: int
    # The rows the scan's claim request took, in the scan's transaction (Store.scan).
    claims: list[Claim] = field(default_factory=list)
    # Whether rows this scan enqueued may be due and unclaimed: no claim request, or one
    # that did not see them all (it took its limit, or the engine left some webhooks to
    # the claimers). False: each row it did not claim waits for room under a cap, for its
    # fifo head or for a rate limit's slot, as after a claim that took fewer rows than
    # it asked for.
    left_due: bool = True


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
    # The webhook's own cap on concurrent attempts (1 for fifo, else its max_in_flight);
    # None: the daemon's delivery.per_webhook_concurrency.
    cap: int | None = None
    # Fifo or rate-limited: the store hands out only what may start now, so the worker pool
    # never claims ahead for it (rows held in memory would bunch up or break the order).
    paced: bool = False
    # The webhook's own headers, client certificate and timeout; None when it sets none.
    options: DeliveryOptions | None = None
    # The event's W3C traceparent (webhookd/tracing.py); None when it came with none.
    traceparent: str | None = None
    # The row's seq, which never changes: DuckDB finds the row of the outcome by it
    # (a range its column statistics narrow), not by scanning every stored id. None on
    # PostgreSQL, whose key index finds the row.
    seq: int | None = None

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
    outcome: str  # log label: delivered, retry, dead, gone, local_failure
    deactivate_webhook: bool = False  # 410: the receiver asked to stop
    claimed_until: datetime | None = None  # the claim's lease (see Claim)
    # False when the daemon's own resources failed (out of file descriptors, ...) and
    # nothing reached the receiver: the row goes back to `status` (pending) at
    # `next_attempt_at` with `error`, its attempts unchanged and no row in the log, so
    # that it counts toward neither `dead` nor auto-disable.
    spent: bool = True
    seq: int | None = None  # the claim's (Claim.seq)

    def __reduce__(self) -> tuple[type[Outcome], tuple[Any, ...]]:
        return Outcome, tuple(getattr(self, name) for name in self.__slots__)


class Ordering(enum.StrEnum):
    """A webhook's `ordering`: deliveries in any order, or one at a time in seq order."""

    NONE = "none"
    FIFO = "fifo"


class Unset(enum.Enum):
    """A field a patch leaves as it is (None is a value there: it clears the setting)."""

    UNSET = "unset"


UNSET = Unset.UNSET
# The last_error of a row the rate limit moved to a later slot (it is no failure).
RATE_LIMITED = "waiting for the webhook's rate limit"


def burst(rate_limit: float) -> float:
    """The token bucket's capacity for a rate limit: one second's worth, at least one."""
    return max(1.0, rate_limit)


@dataclass(frozen=True, slots=True)
class WebhookLimits:
    """A webhook's delivery settings: `rate_limit` deliveries per second (None: no limit),
    `max_in_flight` concurrent attempts (None: delivery.per_webhook_concurrency) and
    `ordering`."""

    rate_limit: float | None = None
    max_in_flight: int | None = None
    ordering: Ordering = Ordering.NONE
    # What the receiver's network requires (network.encode: headers, client certificate,
    # timeout; None: nothing), and the v1a public key (None: v1, HMAC).
    delivery_options: str | None = None
    public_key: str | None = None


@dataclass(frozen=True, slots=True)
class WebhookPatch:
    url: str | None = None
    event_types: list[str] | None = None
    active: bool | None = None
    description: str | None = None
    # UNSET: unchanged; None: cleared (no limit, the daemon's cap).
    rate_limit: float | Unset | None = UNSET
    max_in_flight: int | Unset | None = UNSET
    ordering: Ordering | None = None
    # UNSET: unchanged; None (or {} for headers): cleared.
    headers: dict[str, str] | Unset | None = UNSET
    client_certificate: str | Unset | None = UNSET
    timeout: float | Unset | None = UNSET

    def delivery_options(self, stored: str | None) -> str | Unset | None:
        """The webhook's stored delivery_options after this patch; UNSET if unchanged."""
        if self.headers is UNSET and self.client_certificate is UNSET and self.timeout is UNSET:
            return UNSET
        return network.patched(
            stored,
            network.KEEP if isinstance(self.headers, Unset) else self.headers,
            network.KEEP if isinstance(self.client_certificate, Unset) else self.client_certificate,
            network.KEEP if isinstance(self.timeout, Unset) else self.timeout,
        )


@dataclass(frozen=True, slots=True)
class DeliveryFilter:
    webhook_id: str | None = None
    event_id: str | None = None
    status: Status | None = None
    tenant: str | None = None  # only the deliveries to this tenant's webhooks


@dataclass(slots=True)
class Page:
    """A page of the webhooks listing; `next`: the last webhook id, where the next begins."""

    items: list[WebhookRecord]
    next: str | None = None


# Where a listing of deliveries (newest first) continues: the created_at (naive UTC),
# webhook_id and event_id of the last row of the page before. The API makes its cursor.
DeliveryKey = tuple[datetime, str, str]


@dataclass(slots=True)
class DeliveryPage:
    items: list[dict[str, Any]]
    next: DeliveryKey | None = None


@dataclass(frozen=True, slots=True)
class Pruned:
    queue_rows: int
    log_rows: int


@dataclass(frozen=True, slots=True)
class FifoBlocked:
    """A fifo webhook held up by its head: `event_id` failed `attempts` times (counted as
    the queue row counts them), the first of them at `since` (naive UTC)."""

    event_id: str
    since: datetime
    attempts: int


@dataclass(slots=True)
class StatusReport:
    by_status: dict[str, int] = field(default_factory=dict)
    by_webhook: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_due_age_seconds: float | None = None
    scanner_lag_events: int = 0
    # Events the scanner set aside, never to be delivered (PostgreSQL: an outbox row with a
    # time out of range or data over admin.max_body_bytes, in rejected_events).
    events_rejected: int = 0
    # PostgreSQL: the live daemons on this queue whose shared settings differ from this
    # daemon's (daemon id: the setting names), as its last heartbeat found them.
    settings_disagree: dict[str, list[str]] = field(default_factory=dict)
    scanner_cursor: int = 0
    latest_seq: int = 0
    webhooks_active: int = 0
    disabled_webhooks: dict[str, str | None] = field(default_factory=dict)
    # Fifo webhooks whose head has failed since it became the head (or was last redriven):
    # webhook id -> FifoBlocked.
    fifo_blocked: dict[str, FifoBlocked] = field(default_factory=dict)


Channel = Literal["events", "deliveries"]


class Store(Protocol):
    """What the scanner, workers, upkeep and API need of a database; one engine each.

    Every operation is atomic; writes are durable once the awaitable returns. Leader
    election (Peer) and wake-ups from other processes (Notifier) are interfaces of their
    own, which an engine that shares its database with other daemons also implements
    (PostgreSQL); an engine whose database one daemon owns has neither (DuckDB: it leads
    alone, and a scan or claim that finds nothing already waits in its writer for the
    next transaction).
    """

    engine: str  # "duckdb" or "postgresql", for logs and status only
    # Set when the engine is gone for good (DuckDB's database process died): the daemon
    # stops. An engine that reconnects by itself (PostgreSQL) never sets it.
    lost: asyncio.Event
    migrations_applied: list[int]

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def healthy(self) -> bool:
        """The engine is making progress (for the watchdog): not stuck, not dead."""
        ...

    def available(self) -> bool:
        """The database answers now (for /readyz); False while it is unreachable."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters of the storage engine (transactions, operations), for status."""
        ...

    # start-up and upkeep
    async def rescue_expired(self, now: datetime) -> int:
        """Re-drive inflight rows whose lease ran out (or whose daemon is known dead)."""
        ...

    async def prune(
        self, delivered_before: datetime, log_before: datetime, batch: int
    ) -> Pruned: ...
    async def auto_disable(
        self, failing_before: datetime, reported_failing_before: datetime | None = None
    ) -> list[str]:
        """Deactivate the webhooks failing since before `failing_before`, and report
        (operational events, in the same transaction) those disabled, those failing since
        before `reported_failing_before` (None: none), those recovered, and dead deliveries
        whose report is due."""
        ...

    # the data path
    async def ingest(self, events: list[NewEvent]) -> IngestResult: ...
    async def scan(self, batch_size: int, claim: ClaimRequest | None = None) -> ScanResult:
        """Enqueue the next events after the cursor, at most `batch_size` of them, and
        advance the cursor in the same transaction. Never skips an event, whatever order
        producers' transactions commit in.

        With `claim`, a scan that enqueued rows also claims due rows in its transaction,
        by the rules of `claim` with those arguments (caps, fifo heads, rate limits, a
        lease of this daemon's): ScanResult.claims, which the caller attempts or releases
        as it would a claim's. An engine may claim from fewer webhooks than a claim would
        (ScanResult.left_due says so); never more rows than `claim.limit`."""
        ...

    async def claim(
        self,
        limit: int,
        per_webhook: int,
        lease: float,
        caps: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        """Up to `limit` due rows, oldest first, no webhook left holding more inflight rows
        than its entry in `caps` (default: its own cap, `per_webhook` unless it has a
        max_in_flight); they become inflight with a lease of `lease` seconds, claimed by
        this daemon. On a database shared by several daemons the caps count every daemon's
        inflight rows, and no cap exceeds the webhook's own.

        A fifo webhook gets its head only (the lowest seq of its pending and inflight rows),
        and only while nothing of it is inflight. A rate-limited webhook gets no more rows
        than its token bucket holds, and its candidates the bucket cannot serve are moved to
        the next free slots (next_attempt_at, one per 1/rate seconds): no attempt, no log
        row. Rows waiting behind a fifo head or a rate limit never enter the due set, so the
        cost of a claim does not grow with them."""
        ...

    def record(self, outcome: Outcome) -> asyncio.Future[bool]:
        """Queue an outcome for the next group commit; the future settles once durable,
        with whether rows of the outcome's webhook may be due (True when the engine does
        not know): only then can the slot it freed let a claim take one."""
        ...

    async def release(self, keys: list[tuple[str, str]]) -> int: ...

    # webhooks
    async def create_webhook(
        self,
        url: str,
        event_types: list[str],
        secret: str,
        description: str,
        limits: WebhookLimits | None = None,
        tenant: str | None = None,
    ) -> WebhookRecord: ...
    async def get_webhook(self, webhook_id: str) -> WebhookRecord: ...
    async def get_webhook_secrets(self, webhook_id: str) -> WebhookSecrets:
        """(url, signing secrets, delivery options): for the test route only."""
        ...

    async def list_webhooks(
        self, limit: int, after: str | None, tenant: str | None = None
    ) -> Page: ...
    async def update_webhook(self, webhook_id: str, patch: WebhookPatch) -> WebhookRecord: ...
    async def delete_webhook(self, webhook_id: str) -> None: ...
    async def rotate_secret(self, webhook_id: str, secret: str, grace: float) -> WebhookRecord: ...

    # operators
    async def list_deliveries(
        self, filt: DeliveryFilter, limit: int, after: DeliveryKey | None
    ) -> DeliveryPage: ...
    async def list_attempts(self, webhook_id: str, event_id: str) -> list[dict[str, Any]]: ...
    async def redrive(
        self,
        status: Status,
        webhook_id: str | None,
        since: datetime | None,
        tenant: str | None = None,
    ) -> int: ...
    async def replay(self, event_id: str, webhook_id: str | None, tenant: str | None = None) -> int:
        """With `tenant`: only an event of that tenant, to its webhooks (NotFound else)."""
        ...

    async def status(self, tenant: str | None = None) -> StatusReport:
        """With `tenant`: the counts and webhooks of that tenant's webhooks only."""
        ...

    # tenant tokens (digests only: webhookd.tenants)
    async def create_tenant_token(self, token: StoredToken) -> None: ...
    async def list_tenant_tokens(self, tenant: str) -> list[StoredToken]: ...
    async def revoke_tenant_token(self, tenant: str, token_id: str) -> None:
        """Delete it; NotFound if the tenant has no such token."""
        ...

    async def find_tenant_token(self, token_id: str) -> StoredToken | None: ...


@runtime_checkable
class Owner(Protocol):
    """A database one daemon owns (DuckDB: the file lock proves every other process gone).
    A database several daemons share has none: other daemons' rows are alive, and a dead
    daemon's rows come back through `Store.rescue_expired`."""

    async def rescue_orphans(self) -> int:
        """At start-up, before any claim: return every inflight row to pending (the
        process that claimed them is gone); how many."""
        ...


class Peer(Protocol):
    """Leader election among the daemons of one database (as Oban's Peer)."""

    async def lead(self) -> bool:
        """Whether this daemon should run upkeep now: true on one daemon at a time."""
        ...


class Notifier(Protocol):
    """Wake-ups when any daemon (this one too) or a producer made work (as Oban's
    Notifier): every committed event is announced on `events`."""

    async def wait_for_work(self, channel: Channel, within: float) -> None:
        """Until work is reported on `channel`, or `within` seconds have passed."""
        ...


async def sleep_until_work(
    notifier: Notifier | None, channel: Channel, wake: asyncio.Event, within: float
) -> None:
    """Until `wake` is set (work from this daemon), the notifier reports work on `channel`
    (from any daemon or producer), or `within` seconds have passed. Without a notifier
    the engine's own calls wait for work: ask again at once."""
    if wake.is_set():
        return
    if notifier is None:
        await asyncio.sleep(0)
        return
    woken = asyncio.ensure_future(wake.wait())
    work = asyncio.ensure_future(notifier.wait_for_work(channel, within))
    try:
        await asyncio.wait((woken, work), timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        work.cancel()
