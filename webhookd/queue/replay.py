"""What a replay does (POST /v1/replay), decided once for both engines: whether the event
and the webhook named are found, which rows it takes and what they become, and the count
it answers. Each engine reads what `plan_replay` needs and carries the plan out in one
transaction of its own SQL (replay, replay_enqueue)."""

from __future__ import annotations

from dataclasses import dataclass

from webhookd.states import Event, Status, sources
from webhookd.store.base import NotFound


@dataclass(frozen=True, slots=True)
class Owned:
    """A stored event or webhook, as far as replay asks: its tenant (None: of no tenant)."""

    tenant: str | None


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """Event `event_id`'s rows (of `webhook_id` alone when it is not None), in one
    transaction, in this order: rows in `states` (finished: delivered, dead, parked) become
    `becomes`, due now, with a fresh attempt budget and no lease; then rows the event has no
    longer (pruned after delivery) or not yet (not scanned) are inserted, `becomes` and due
    now, for every active webhook the event matches, or for the webhook named whatever its
    filter. Rows of a webhook inactive or gone go back to parked. Rows pending or in flight
    are left as they are."""

    event_id: str
    webhook_id: str | None
    states: tuple[Status, ...] = sources(Event.REPLAY)
    becomes: Status = Status.PENDING

    def count(self, made_due: int, enqueued: int, parked_again: int) -> int:
        """The count a replay answers: rows it made due (`made_due`, from `states`) and
        rows enqueued for it (`enqueued`: inserted, or enqueued by a scan it forced), less
        those that went back to parked (`parked_again`)."""
        return made_due + enqueued - parked_again


def plan_replay(
    event_id: str,
    webhook_id: str | None,
    caller: str | None,
    event: Owned | None,
    webhook: Owned | None,
) -> ReplayPlan:
    """The plan, or NotFound. `caller`: the tenant of the caller's token (None: the admin
    token); `event`, `webhook`: as stored, None if there is none (`webhook` is only read
    when `webhook_id` is named). An event of another tenant is not found, as one that does
    not exist; a webhook named must be of the event's tenant (routing holds for replay)."""
    if event is None or (caller is not None and event.tenant != caller):
        raise NotFound(f"no event {event_id!r}")
    if webhook_id is not None and (webhook is None or webhook.tenant != event.tenant):
        raise NotFound(f"no webhook {webhook_id!r}")
    return ReplayPlan(event_id, webhook_id)
