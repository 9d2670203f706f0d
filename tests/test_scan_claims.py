"""A scan that claims (Store.scan with a ClaimRequest, issue 26's happy path), on every
engine through the conformance fixture `store`: DuckDB through RemoteStore and its
database process, PostgreSQL through its pool.

Whatever a scan's claim takes it takes as a claim would (inflight, with this daemon's
lease, within caps, fifo heads and rate limits, never beyond its limit), and when it says
it left nothing due (ScanResult.left_due false), a claim right after finds nothing.
"""

from __future__ import annotations

from datetime import timedelta

from tests.test_store import events, hook, outcome, paced_hook, rows_of, statuses
from webhookd.states import Status
from webhookd.store.base import ClaimRequest, Ordering, ScanResult, Store
from webhookd.store.records import utcnow

LEASE = 30.0


def ask(limit: int = 10, per_webhook: int = 8, **caps: int) -> ClaimRequest:
    return ClaimRequest(limit, per_webhook, LEASE, caps)


async def ingest(store: Store, n: int, prefix: str = "e") -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    await store.ingest(events(*[(i, "t") for i in ids]))
    return ids


async def nothing_left_due(store: Store, result: ScanResult, request: ClaimRequest) -> None:
    """What a scan that says it left nothing due promises: a claim finds nothing."""
    if not result.left_due:
        assert await store.claim(request.limit, request.per_webhook, LEASE, request.caps) == []


async def test_a_scan_claims_the_rows_it_enqueued_inflight_under_its_lease(store: Store) -> None:
    a, b = await hook(store), await hook(store)
    await ingest(store, 2)
    before = utcnow()
    result = await store.scan(500, ask())
    assert (result.events, result.enqueued) == (2, 4)
    assert sorted((c.webhook_id, c.event_id) for c in result.claims) == sorted(
        [(a, "e0"), (a, "e1"), (b, "e0"), (b, "e1")]
    )
    assert not result.left_due
    assert set((await statuses(store)).values()) == {"inflight"}
    for c in result.claims:
        assert (c.attempt, c.budget_attempt) == (1, 1)
        assert c.body and c.url == "http://127.0.0.1:9/h" and c.secrets
        assert c.claimed_until is not None
        lease = (c.claimed_until - before).total_seconds()
        assert LEASE - 5 < lease < LEASE + 5
    # Claimed once: no claim takes them again, and their outcomes apply under this lease.
    assert await store.claim(10, 8, LEASE) == []
    assert await store.rescue_expired(utcnow()) == 0
    first = result.claims[0]
    await store.record(outcome(first, Status.DELIVERED, code=204))
    assert (await statuses(store))[(first.webhook_id, first.event_id)] == "delivered"
    # The others come back once their lease has run out, as any claim's.
    later = utcnow() + timedelta(seconds=LEASE + 5)
    assert await store.rescue_expired(later) == 3
    assert len(await store.claim(10, 8, LEASE)) == 3


async def test_a_scan_claims_nothing_beyond_its_limit(store: Store) -> None:
    wid = await hook(store)
    ids = await ingest(store, 5)
    result = await store.scan(500, ask(limit=2))
    assert result.enqueued == 5
    taken = {c.event_id for c in result.claims}
    assert len(taken) == 2 and {c.webhook_id for c in result.claims} == {wid}
    assert result.left_due  # the limit was reached: the claimers take the rest
    rows = await rows_of(store, wid)
    assert {e: r["status"] for e, r in rows.items()} == {
        e: "inflight" if e in taken else "pending" for e in ids
    }
    rest = {c.event_id for c in await store.claim(10, 8, LEASE)}
    assert rest == set(ids) - taken


async def test_a_scan_claims_within_every_cap(store: Store) -> None:
    asked_one, own_two, plain = (
        await hook(store),
        await paced_hook(store, max_in_flight=2),
        await hook(store),
    )
    await ingest(store, 4)
    request = ClaimRequest(20, 3, LEASE, {asked_one: 1})
    result = await store.scan(500, request)
    taken = {w: sum(c.webhook_id == w for c in result.claims) for w in (asked_one, own_two, plain)}
    assert taken == {asked_one: 1, own_two: 2, plain: 3}
    assert not result.left_due  # the rest wait for room
    await nothing_left_due(store, result, request)
    # A row the scan left for want of room is claimed once a slot frees, as after a claim.
    plain_taken = [c for c in result.claims if c.webhook_id == plain]
    await store.record(outcome(plain_taken[0], Status.DELIVERED, code=204))
    (next_one,) = await store.claim(20, 3, LEASE, {asked_one: 1})
    assert next_one.webhook_id == plain
    assert next_one.event_id not in {c.event_id for c in plain_taken}


async def test_a_scan_counts_the_rows_already_inflight_against_the_cap(store: Store) -> None:
    wid = await hook(store)
    await ingest(store, 2, "old")
    await store.scan(500)
    assert len(await store.claim(10, 3, LEASE)) == 2
    await ingest(store, 3, "new")
    result = await store.scan(500, ask(per_webhook=3))
    assert [c.webhook_id for c in result.claims] == [wid]
    assert result.claims[0].event_id.startswith("new")
    assert not result.left_due


async def test_a_scan_claims_a_fifo_webhooks_head_only(store: Store) -> None:
    fifo = await paced_hook(store, ordering=Ordering.FIFO)
    other = await hook(store)
    await ingest(store, 3)
    request = ask()
    result = await store.scan(500, request)
    by_hook = {(c.webhook_id, c.event_id) for c in result.claims}
    assert by_hook == {(fifo, "e0"), (other, "e0"), (other, "e1"), (other, "e2")}
    (head,) = [c for c in result.claims if c.webhook_id == fifo]
    assert (head.cap, head.paced) == (1, True)
    await nothing_left_due(store, result, request)
    # The next in line goes once the head is done, to a claim.
    await store.record(outcome(head, Status.DELIVERED, code=204))
    (second,) = await store.claim(10, 8, LEASE)
    assert (second.webhook_id, second.event_id) == (fifo, "e1")


async def test_a_scan_claims_no_more_than_a_rate_limit_allows(store: Store) -> None:
    """One every 100 s: the bucket holds one, and the next slot is far off. An engine may
    leave a rate-limited webhook to the claimers altogether (PostgreSQL does, and says so:
    ScanResult.left_due); it never takes more than the bucket holds."""
    limited = await paced_hook(store, rate_limit=0.01)
    await ingest(store, 4)
    request = ask()
    result = await store.scan(500, request)
    assert result.enqueued == 4
    assert len(result.claims) <= 1
    rows = await rows_of(store, limited)
    inflight = {e for e, r in rows.items() if r["status"] == "inflight"}
    assert inflight == {c.event_id for c in result.claims}
    await nothing_left_due(store, result, request)
    # Whatever the scan took, a claim now gets no more than the bucket had left.
    again = await store.claim(10, 8, LEASE)
    assert len(result.claims) + len(again) == 1


async def test_a_scan_that_enqueues_nothing_claims_nothing(store: Store) -> None:
    """Due rows from before are the claimers' (a scan's claim costs its statements only
    when it brings new rows)."""
    await hook(store, ["wanted"])
    await store.ingest(events(("w0", "wanted")))
    await store.scan(500)
    await store.ingest(events(("e0", "other")))
    result = await store.scan(500, ask())
    assert (result.events, result.enqueued, result.claims) == (1, 0, [])
    empty = await store.scan(500, ask())
    assert (empty.events, empty.claims) == (0, [])
    assert set((await statuses(store)).values()) == {"pending"}
