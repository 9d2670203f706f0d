"""Operational events (SPEC "Operational events"): what webhookd reports of its own webhooks,
decided here for both engines; each engine writes the events this returns in the
transaction of the change they report.

* Types: ``webhookd.webhook.disabled`` (auto-disable or 410, with the reason), ``.enabled``,
  ``.failing`` (a webhook that was delivering has failed every attempt for
  ``operational.failing_after``; once per episode), ``.recovered`` (it delivered again after
  ``failing`` was reported), ``webhookd.delivery.dead`` (at most one per webhook per
  DEAD_WINDOW, with the count and the first and last event ids).
* Routing: an operational event goes only to webhooks that list its type in their
  ``event_types`` (an empty filter, "every type", means every producer type, not these):
  only an operator's endpoint receives them.
  A change of a tenant's webhook is written twice, with the same data: as an event of that
  tenant (its own webhooks hear it) and as an event of no tenant (the operator's webhooks,
  which have none, hear every tenant's); the ordinary tenant routing does the rest, so the
  scan's match stays one indexed equality on the tenant.
* No loops: producers may not post these types (events.py refuses ``webhookd.*``); a
  delivery of an operational event that goes dead reports nothing; and a webhook that
  subscribes to operational events (an operator's endpoint) is never reported disabled,
  failing or recovered, so its own outage (a 410 to a report, say) cannot feed itself.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from webhookd.events import RESERVED_PREFIX, NewEvent, body, canonical_json

PREFIX = RESERVED_PREFIX
DISABLED = "webhookd.webhook.disabled"
ENABLED = "webhookd.webhook.enabled"
FAILING = "webhookd.webhook.failing"
RECOVERED = "webhookd.webhook.recovered"
DEAD = "webhookd.delivery.dead"
TYPES = (DISABLED, ENABLED, FAILING, RECOVERED, DEAD)
# At most one webhookd.delivery.dead per webhook in this window.
DEAD_WINDOW = timedelta(minutes=1)


def is_operational(event_type: str) -> bool:
    return event_type.startswith(PREFIX)


def listens(event_types: Sequence[str]) -> bool:
    """Whether a webhook with this filter is an operator's endpoint for these events."""
    return any(is_operational(t) for t in event_types)


def _iso(value: datetime) -> str:
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def events(
    event_type: str, webhook_id: str, tenant: str | None, data: dict[str, Any], now: datetime
) -> list[NewEvent]:
    """The events reporting one change of webhook `webhook_id` (of `tenant`)."""
    payload = canonical_json({"webhook_id": webhook_id, "tenant": tenant, **data})
    occurred = now if now.tzinfo else now.replace(tzinfo=UTC)
    base = "whop_" + _random.token_hex(12)
    made = []
    for event_id, scope in ((base, None), (base + "_t", tenant)):
        if event_id != base and tenant is None:
            break
        made.append(
            NewEvent(
                event_id,
                event_type,
                payload,
                occurred,
                body(event_id, event_type, occurred, payload),
                scope,
            )
        )
    return made


@dataclass(frozen=True, slots=True)
class Webhook:
    """What a report needs to know of a webhook."""

    webhook_id: str
    tenant: str | None
    event_types: Sequence[str]


def disabled(hook: Webhook, reason: str, now: datetime) -> list[NewEvent]:
    """A webhook deactivated by webhookd (auto-disable, 410). Nothing for an operator's
    endpoint: only it receives operational events, so only this keeps a 410 answering one
    from being reported."""
    if listens(hook.event_types):
        return []
    return events(DISABLED, hook.webhook_id, hook.tenant, {"reason": reason, "at": _iso(now)}, now)


def enabled(hook: Webhook, now: datetime) -> list[NewEvent]:
    return events(ENABLED, hook.webhook_id, hook.tenant, {"at": _iso(now)}, now)


def failing(hook: Webhook, since: datetime, now: datetime) -> list[NewEvent]:
    if listens(hook.event_types):
        return []
    data = {"failing_since": _iso(since), "at": _iso(now)}
    return events(FAILING, hook.webhook_id, hook.tenant, data, now)


def recovered(hook: Webhook, since: datetime | None, now: datetime) -> list[NewEvent]:
    if listens(hook.event_types):
        return []
    data = {"failing_since": None if since is None else _iso(since), "at": _iso(now)}
    return events(RECOVERED, hook.webhook_id, hook.tenant, data, now)


@dataclass(frozen=True, slots=True)
class DeadTally:
    """A webhook's dead deliveries not reported yet, and when one was last reported."""

    count: int = 0
    first_event_id: str | None = None
    last_event_id: str | None = None
    first_at: datetime | None = None
    reported_at: datetime | None = None


def tally_dead(tally: DeadTally, event_ids: Sequence[str], now: datetime) -> DeadTally:
    """`event_ids` went dead (deliveries of producer events only), in this order."""
    if not event_ids:
        return tally
    return DeadTally(
        tally.count + len(event_ids),
        tally.first_event_id or event_ids[0],
        event_ids[-1],
        tally.first_at or now,
        tally.reported_at,
    )


def due(tally: DeadTally, now: datetime) -> bool:
    """A report is due: something to report and no report within DEAD_WINDOW."""
    return tally.count > 0 and (tally.reported_at is None or now - tally.reported_at >= DEAD_WINDOW)


def report_dead(hook: Webhook, tally: DeadTally, now: datetime) -> tuple[DeadTally, list[NewEvent]]:
    """The tally after this moment, and the event reporting it if one is due now."""
    if not due(tally, now):
        return tally, []
    assert tally.first_at is not None
    data = {
        "count": tally.count,
        "first_event_id": tally.first_event_id,
        "last_event_id": tally.last_event_id,
        "since": _iso(tally.first_at),
        "at": _iso(now),
    }
    made = events(DEAD, hook.webhook_id, hook.tenant, data, now)
    return DeadTally(reported_at=now), made
