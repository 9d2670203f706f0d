"""The JSON objects of the API from the records the store returns."""

from __future__ import annotations

from typing import Any

from webhookd import network
from webhookd.store.records import WebhookRecord, iso


def webhook_json(w: WebhookRecord) -> dict[str, Any]:
    """A webhook as the API shows it: no secrets, header values masked."""
    return {
        "webhook_id": w.webhook_id,
        "url": w.url,
        "event_types": list(w.event_types),
        "active": w.active,
        "description": w.description,
        "disabled_reason": w.disabled_reason,
        "failing_since": iso(w.failing_since),
        "previous_secret_expires_at": iso(w.previous_secret_expires_at),
        "created_at": iso(w.created_at),
        "updated_at": iso(w.updated_at),
        "rate_limit": w.rate_limit,
        "max_in_flight": w.max_in_flight,
        "ordering": w.ordering,
        "tenant": w.tenant,
        **network.shown(w.delivery_options, w.public_key),
    }
