"""What a change to a webhook does (PATCH /v1/webhooks/{id}), decided once for both
engines: the columns it writes, and what becomes of the webhook's queued rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from webhookd.queue.pacing import Pace, tokens_now
from webhookd.store.base import UNSET, Ordering, Unset, WebhookPatch, burst

DISABLED_BY_OPERATOR = "disabled by an operator"


@dataclass(frozen=True, slots=True)
class PatchPlan:
    """`sets`: columns of the webhooks row and their new values (None is NULL), in a
    fixed order of names written here, never taken from a request. Then, in the same
    transaction, and in this order: `rate_limited_due` (the rows the old rate limit moved
    to later slots are due now, and paced again), `waiting_due` (rows waiting behind a
    fifo head are due now, in any order), `enable` (parked rows due again, Event.ENABLE)
    or `park` (pending rows parked, Event.DISABLE); the engine settles the webhook's fifo
    order last in every case (a switch to fifo: its rows wait behind the oldest)."""

    sets: dict[str, Any]
    rate_limited_due: bool
    waiting_due: bool
    enable: bool
    park: bool


def plan_patch(
    patch: WebhookPatch,
    active: bool,
    pace: Pace,
    now: datetime,
    delivery_options: str | None = None,
) -> PatchPlan:
    """The plan for `patch` on a webhook that is `active` with this `pace` and these
    `delivery_options` (as stored)."""
    sets: dict[str, Any] = {"updated_at": now}
    options = patch.delivery_options(delivery_options)
    if not isinstance(options, Unset):
        sets["delivery_options"] = options
    new_rate = patch.rate_limit
    rate_changed = False
    if not isinstance(new_rate, Unset) and new_rate != pace.rate_limit:
        rate_changed = True
        # The bucket keeps what it holds, within the new burst; the slots the old limit
        # gave out are void: its waiting rows are due now, and paced again.
        held = None
        if new_rate is not None and pace.rate_limit is not None:
            held = min(burst(new_rate), tokens_now(pace, now))
        sets.update(rate_limit=new_rate, rate_tokens=held, rate_refilled_at=now)
    if rate_changed or (patch.active is not None and patch.active != active):
        sets["rate_next_at"] = None
    if patch.max_in_flight is not UNSET:
        sets["max_in_flight"] = patch.max_in_flight
    ordering_changed = patch.ordering is not None and patch.ordering != pace.ordering
    if ordering_changed:
        sets["ordering"] = str(patch.ordering)
    if patch.url is not None:
        sets["url"] = patch.url
    if patch.event_types is not None:
        sets["event_types"] = list(patch.event_types)
    if patch.description is not None:
        sets["description"] = patch.description
    enabling = patch.active is True and not active
    if patch.active is not None:
        sets["active"] = patch.active
        if enabling:
            sets.update(
                disabled_reason=None,
                failing_since=None,
                health_reset_at=now,
                # A new episode: the enabled event says it; no recovered follows.
                failing_reported=None,
            )
        elif not patch.active and active:
            sets["disabled_reason"] = DISABLED_BY_OPERATOR
    return PatchPlan(
        sets=sets,
        rate_limited_due=rate_changed,
        waiting_due=ordering_changed and patch.ordering == Ordering.NONE,
        enable=enabling,
        park=patch.active is False,
    )
