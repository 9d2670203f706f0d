"""What every engine returns, in one shape: rows as the API shows them, page cursors, now.

Both engines build their answers here, so a listing from PostgreSQL cannot drift from
one from DuckDB. Times are naive UTC datetimes in the stores and ISO 8601 with a Z out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webhookd import signing
from webhookd.network import DeliveryOptions


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(value: datetime) -> datetime:
    """A datetime as the stores keep it: naive, in UTC."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return naive_utc(value).isoformat(timespec="microseconds") + "Z"


WEBHOOK_COLUMNS = (
    "webhook_id, url, event_types, active, description, disabled_reason, failing_since, "
    "previous_secret_expires_at, created_at, updated_at, rate_limit, max_in_flight, ordering, "
    "delivery_options, public_key, tenant"
)


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """A webhook as every engine returns it (no secrets); the API renders it (api/render.py).
    Times naive UTC; `previous_secret_expires_at` None once past (by the store's clock);
    `delivery_options` as stored (network.encode), header values and all."""

    webhook_id: str
    url: str
    event_types: list[str]
    active: bool
    description: str
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    rate_limit: float | None
    max_in_flight: int | None
    ordering: str
    tenant: str | None
    delivery_options: str | None
    public_key: str | None


def webhook_record(row: Sequence[Any], now: datetime) -> WebhookRecord:
    """A webhook from a row of WEBHOOK_COLUMNS."""
    (wid, url, types, active, desc, reason, failing, prev_exp, created, updated) = row[:10]
    rate_limit, max_in_flight, ordering, options, public_key, tenant = row[10:16]
    return WebhookRecord(
        webhook_id=wid,
        url=url,
        event_types=list(types),
        active=active,
        description=desc,
        disabled_reason=reason,
        failing_since=failing,
        previous_secret_expires_at=prev_exp if prev_exp and prev_exp > now else None,
        created_at=created,
        updated_at=updated,
        rate_limit=rate_limit,
        max_in_flight=max_in_flight,
        ordering=ordering or "none",
        tenant=tenant,
        delivery_options=options,
        public_key=public_key,
    )


DELIVERY_COLUMNS = (
    "webhook_id, event_id, status, attempts, next_attempt_at, lease_until, "
    "last_status_code, last_error, last_attempt_at, created_at, updated_at"
)


def delivery_row(row: Sequence[Any]) -> dict[str, Any]:
    wid, eid, status, attempts, nxt, lease, code, err, last, created, updated = row
    return {
        "webhook_id": wid,
        "event_id": eid,
        "status": status,
        "attempts": attempts,
        "next_attempt_at": iso(nxt),
        "lease_until": iso(lease),
        "last_status_code": code,
        "last_error": err,
        "last_attempt_at": iso(last),
        "created_at": iso(created),
        "updated_at": iso(updated),
    }


ATTEMPT_COLUMNS = (
    "attempt_id, webhook_id, event_id, attempt, attempted_at, duration_ms, status_code, "
    "error, response_excerpt, outcome"
)
ATTEMPT_KEYS = tuple(name.strip() for name in ATTEMPT_COLUMNS.split(","))


def attempt_row(row: Sequence[Any]) -> dict[str, Any]:
    item = dict(zip(ATTEMPT_KEYS, row, strict=True))
    item["attempted_at"] = iso(item["attempted_at"])
    return item


def signing_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> tuple[str, ...]:
    """Every secret that signs now: two while a rotation's grace lasts."""
    if previous and previous_expires_at and previous_expires_at > now:
        return (secret, previous)
    return (secret,)


# The test route's view of a webhook: url, signing secrets, delivery options.
WebhookSecrets = tuple[str, tuple[str, ...], DeliveryOptions | None]


def public_key_of(secret: str) -> str | None:
    """The v1a public key of a `whsk_` secret; None for an HMAC (v1) secret."""
    return signing.public_key(secret) if signing.scheme(secret) == "v1a" else None
