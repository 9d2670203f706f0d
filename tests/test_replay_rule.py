"""Replay's rule (webhookd/queue/replay.py) held on every engine: which rows it takes,
what they become, the count it answers, and who finds what (tenants)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.test_store import outcome
from webhookd.events import NewEvent, parse_event
from webhookd.queue.replay import Owned, ReplayPlan, plan_replay
from webhookd.signing import new_secret
from webhookd.states import Status
from webhookd.store.base import DeliveryFilter, NotFound, Store, WebhookPatch


def event(event_id: str, tenant: str | None = None, event_type: str = "t") -> NewEvent:
    raw: dict[str, Any] = {"id": event_id, "type": event_type, "data": {"n": 1}}
    if tenant is not None:
        raw["tenant"] = tenant
    return parse_event(raw, 0, datetime.now().astimezone())


async def hook(store: Store, tenant: str | None = None, types: list[str] | None = None) -> str:
    created = await store.create_webhook(
        "http://127.0.0.1:9/h", types or [], new_secret(), "", tenant=tenant
    )
    webhook_id: str = created["webhook_id"]
    return webhook_id


async def statuses(store: Store) -> dict[str, str]:
    page = await store.list_deliveries(DeliveryFilter(), 1000, None)
    return {i["webhook_id"]: i["status"] for i in page.items}


async def test_replay_takes_finished_rows_and_counts_only_those_due_again(store: Store) -> None:
    """Delivered and dead rows become pending with a fresh budget and count; a row in
    flight and a pending row are left as they are; a row of an inactive webhook is parked
    again and does not count."""
    delivered, dead, inflight, pending, inactive = [await hook(store) for _ in range(5)]
    await store.ingest([event("e1")])
    await store.scan(500)
    claims = {c.webhook_id: c for c in await store.claim(10, 8, 300)}
    await store.record(outcome(claims[delivered], Status.DELIVERED, code=204))
    await store.record(outcome(claims[dead], Status.DEAD))
    await store.release([(pending, "e1"), (inactive, "e1")])
    await store.update_webhook(inactive, WebhookPatch(active=False))
    before = await statuses(store)
    assert before == {
        delivered: "delivered",
        dead: "dead",
        inflight: "inflight",
        pending: "pending",
        inactive: "parked",
    }

    assert await store.replay("e1", None) == 2

    assert await statuses(store) == {
        delivered: "pending",
        dead: "pending",
        inflight: "inflight",
        pending: "pending",
        inactive: "parked",
    }
    again = {c.webhook_id: c for c in await store.claim(10, 8, 300)}
    assert set(again) == {delivered, dead, pending}
    # A fresh budget: the attempt before the replay no longer counts against max_attempts.
    assert (again[dead].attempt, again[dead].budget_attempt) == (2, 1)


async def test_replay_finds_only_what_its_caller_may_see(store: Store) -> None:
    """An event of another tenant is not found, as one that does not exist; a webhook named
    must exist and be of the event's tenant; one that is gets the event whatever its
    filter. A replay not found changes nothing."""
    mine = await hook(store, tenant="acme", types=["other"])
    theirs = await hook(store, tenant="globex")
    await store.ingest([event("e1", tenant="acme")])
    await store.scan(500)
    assert await statuses(store) == {}  # `mine` does not take type t

    for event_id, webhook_id, caller, missing in [
        ("nope", None, None, "no event 'nope'"),
        ("e1", None, "globex", "no event 'e1'"),
        ("e1", theirs, None, f"no webhook {theirs!r}"),
        ("e1", theirs, "acme", f"no webhook {theirs!r}"),
        ("e1", "wh_nope", None, "no webhook 'wh_nope'"),
    ]:
        with pytest.raises(NotFound) as found:
            await store.replay(event_id, webhook_id, caller)
        assert missing in str(found.value)
    assert await statuses(store) == {}

    assert await store.replay("e1", mine, "acme") == 1
    assert await statuses(store) == {mine: "pending"}


def test_the_plan_decides_not_found_and_the_count() -> None:
    acme, globex = Owned("acme"), Owned("globex")
    plan = plan_replay("e1", None, "acme", acme, None)
    assert plan == ReplayPlan("e1", None)
    assert set(plan.states) == {Status.DELIVERED, Status.DEAD, Status.PARKED}
    assert plan.becomes is Status.PENDING
    assert plan.count(made_due=3, enqueued=2, parked_again=1) == 4
    assert plan_replay("e1", "w1", None, Owned(None), Owned(None)).webhook_id == "w1"
    for args in [
        ("e1", None, "acme", None, None),
        ("e1", None, "acme", globex, None),
        ("e1", "w1", None, acme, None),
        ("e1", "w1", None, acme, globex),
        ("e1", "w1", None, acme, Owned(None)),
    ]:
        with pytest.raises(NotFound):
            plan_replay(*args)  # type: ignore[arg-type]
