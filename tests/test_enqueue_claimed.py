"""A DuckDB scan of a few events with a claim request enqueues their rows already claimed
(batches.enqueue_claimed) when the claim would take them all, and leaves every other case
to the scan and claim as before. Either way the queue and the claims must come out the
same: the same rows, states, bodies and trace contexts, the same claims. On a real DuckDB
file, through the main writer's remembering cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.duckdb_cursor import Counting, counting_cursor, in_transaction
from webhookd.events import parse_event
from webhookd.queue.routes import Routes
from webhookd.store.base import ClaimRequest, Ordering, WebhookLimits
from webhookd.store.duckdb import admin, batches
from webhookd.store.duckdb.queries import MATCHES
from webhookd.store.records import utcnow

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ASK = ClaimRequest(limit=64, per_webhook=8, lease=600.0)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def con(tmp_path: Path) -> Iterator[Counting]:
    with counting_cursor(tmp_path) as cur:
        yield cur


def _hook(
    con: Counting,
    types: list[str],
    tenant: str | None = None,
    limits: WebhookLimits | None = None,
    active: bool = True,
) -> str:
    (record,) = in_transaction(
        con,
        admin.create_webhook,
        [("https://example.com/h", types, SECRET, "", limits or WebhookLimits(), tenant)],
    )
    if not active:
        in_transaction(
            con,
            lambda c: c.execute(
                "UPDATE webhooks SET active = false WHERE webhook_id = ?", [record.webhook_id]
            ),
        )
    return str(record.webhook_id)


def _emit(con: Counting, *events: dict[str, Any]) -> None:
    now = utcnow()
    parsed = [parse_event(raw, i, now) for i, raw in enumerate(events)]
    in_transaction(con, batches.ingest, [parsed])


def _queue(con: Counting) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in con.execute(
            "SELECT webhook_id, event_id, status, attempts, retry_base, body, seq, traceparent,"
            " next_attempt_at IS NULL, lease_until IS NULL, last_error"
            " FROM webhook_delivery_queue ORDER BY webhook_id, event_id"
        ).fetchall()
    ]


def _scan(con: Counting, *, direct: bool, request: ClaimRequest = ASK) -> Any:
    """One scan with a claim request, as the scanner asks; with `direct` False as before
    this change (FEW_EVENTS 0: never enqueued claimed). The queue and the claims after
    it, then rolled back."""
    few = batches.FEW_EVENTS
    batches.FEW_EVENTS = few if direct else 0
    con.ran.clear()
    con.execute("BEGIN TRANSACTION")
    try:
        result = batches.scan_claim(con, 500, request, careful=False)
        queue = _queue(con)
        ran = list(con.ran)
    finally:
        con.execute("ROLLBACK")
        batches.FEW_EVENTS = few
    claims = sorted(
        (
            c.webhook_id,
            c.event_id,
            c.attempt,
            c.budget_attempt,
            c.url,
            c.secrets,
            c.body,
            c.cap,
            c.paced,
            c.options,
            c.traceparent,
            c.seq,
        )
        for c in result.claims
    )
    return (result.events, result.enqueued, result.cursor), queue, claims, ran


def _same_either_way(con: Counting, request: ClaimRequest = ASK) -> bool:
    """Whether the scan enqueued claimed; asserts it left what the scan and claim leave."""
    counted, queue, claims, ran = _scan(con, direct=True, request=request)
    assert (counted, queue, claims) == _scan(con, direct=False, request=request)[:3]
    return "scan_enqueue" not in ran


def test_one_event_to_one_webhook_is_enqueued_claimed_as_scan_and_claim_leave_it(
    con: Counting,
) -> None:
    hook = _hook(con, ["t"])
    _emit(con, {"id": "e1", "type": "t", "data": {"n": 1}, "traceparent": TRACE})
    assert _same_either_way(con)
    counted, queue, claims, ran = _scan(con, direct=True)
    assert counted[:2] == (1, 1)
    assert [(r[0], r[1], r[2], r[3], r[7]) for r in queue] == [(hook, "e1", "inflight", 0, TRACE)]
    assert [(c[0], c[1], c[2]) for c in claims] == [(hook, "e1", 1)]
    # Neither the scan's join nor claim's top-N and update by rowid.
    assert not {"scan_enqueue", "scan_read", "claim", "claim_take"} & set(ran)


def test_a_few_events_over_tenants_and_types_are_enqueued_claimed(con: Counting) -> None:
    _hook(con, ["t"])
    _hook(con, [])
    _hook(con, ["t", "u"], tenant="acme")
    _hook(con, [], tenant="acme")
    _hook(con, ["t"], tenant="globex")
    _hook(con, ["t"], active=False)
    _emit(
        con,
        {"id": "e1", "type": "t", "data": {}},
        {"id": "e2", "type": "u", "data": {}, "tenant": "acme"},
        {"id": "e3", "type": "t", "data": {}, "tenant": "acme"},
        {"id": "e4", "type": "v", "data": {}},
        {"id": "e5", "type": "t", "data": {}, "tenant": "initech"},
    )
    assert _same_either_way(con)
    counted, _, claims, _ = _scan(con, direct=True)
    assert counted[:2] == (5, 7) and len(claims) == 7


def test_events_no_webhook_takes_move_the_cursor_and_enqueue_nothing(con: Counting) -> None:
    _hook(con, ["t"])
    _emit(con, {"id": "e1", "type": "other", "data": {}})
    assert _same_either_way(con)
    counted, queue, claims, _ = _scan(con, direct=True)
    assert counted[:2] == (1, 0) and queue == [] and claims == []


@pytest.mark.parametrize(
    "case",
    [
        "a row already due",
        "a webhook at its cap",
        "a fifo webhook",
        "a rate-limited webhook",
        "a webhook with its own max_in_flight",
        "more events than a few",
        "more rows than the request's limit",
    ],
)
def test_what_the_claim_would_not_take_whole_is_scanned_and_claimed_as_before(
    con: Counting, case: str
) -> None:
    request = ASK
    limits = {
        "a fifo webhook": WebhookLimits(ordering=Ordering.FIFO),
        "a rate-limited webhook": WebhookLimits(rate_limit=5.0),
        "a webhook with its own max_in_flight": WebhookLimits(max_in_flight=3),
    }.get(case)
    _hook(con, ["t"], limits=limits)
    if case == "a row already due":
        _emit(con, {"id": "e0", "type": "t", "data": {}})
        in_transaction(con, lambda c: batches.scan_once(c, 500, careful=False))  # not claimed
    if case == "a webhook at its cap":
        request = ClaimRequest(limit=64, per_webhook=1, lease=600.0)
        _emit(con, {"id": "e0", "type": "t", "data": {}})
        in_transaction(con, batches.scan, [(500, request, False)])
    many = batches.FEW_EVENTS + 1 if case == "more events than a few" else 2
    if case == "more rows than the request's limit":
        request = ClaimRequest(limit=1, per_webhook=8, lease=600.0)
    _emit(con, *({"id": f"e{n + 1}", "type": "t", "data": {}} for n in range(many)))
    assert not _same_either_way(con, request)


def test_a_webhook_with_room_takes_its_row_claimed_beside_rows_held(con: Counting) -> None:
    hook = _hook(con, ["t"])
    _emit(con, {"id": "e1", "type": "t", "data": {}})
    in_transaction(con, batches.scan, [(500, ASK, False)])
    _emit(con, {"id": "e2", "type": "t", "data": {}})
    assert _same_either_way(con)
    _, queue, _, _ = _scan(con, direct=True)
    held = [(hook, "e1", "inflight"), (hook, "e2", "inflight")]
    assert [(r[0], r[1], r[2]) for r in queue] == held


def test_a_claim_in_the_same_transaction_after_finds_nothing_due_and_asks_nothing(
    con: Counting,
) -> None:
    """The pool's claim that boards the scan's transaction (RemoteStore.scan's
    direct_only) runs after it: the rows are inflight already, and the scan found when
    the next row falls due (never: none waits), so the claim runs no statement."""
    _hook(con, ["t"])
    _emit(con, {"id": "e1", "type": "t", "data": {}})
    con.execute("BEGIN TRANSACTION")
    (scanned,) = batches.scan(con, [(500, ASK, True)])
    con.ran.clear()
    (claimed,) = batches.claim(con, [(64, 8, 600.0, {})])
    assert con.ran == []
    con.execute("COMMIT")
    assert len(scanned.claims) == 1 and claimed == []


def test_direct_only_claims_nothing_the_scan_could_not_enqueue_claimed(con: Counting) -> None:
    _hook(con, ["t"], limits=WebhookLimits(ordering=Ordering.FIFO))
    _emit(con, {"id": "e1", "type": "t", "data": {}})
    (scanned,) = in_transaction(con, batches.scan, [(500, ASK, True)])
    assert scanned.enqueued == 1 and scanned.claims == []


# (webhook tenant, webhook types, event type, event tenant)
ROUTING = [
    (None, ["t"], "t", None),
    (None, ["t"], "u", None),
    (None, [], "t", None),
    (None, [], "webhookd.webhook.failing", None),
    (None, ["webhookd.webhook.failing"], "webhookd.webhook.failing", None),
    (None, ["t", "webhookd.delivery.dead"], "webhookd.delivery.dead", None),
    ("acme", ["t"], "t", "acme"),
    ("acme", ["t"], "t", None),
    (None, ["t"], "t", "acme"),
    ("acme", [], "t", "globex"),
    ("acme", [], "t", "acme"),
    ("", ["t"], "t", None),
    (None, ["t"], "t", ""),
    (None, ["t", "t"], "t", None),
]


def test_routes_take_what_the_scans_join_takes(con: Counting) -> None:
    """queue/routes.py is the scan's MATCHES in Python: case by case, the same answer."""
    con.execute(
        "CREATE TEMP TABLE w (webhook_id VARCHAR, tenant VARCHAR, event_types VARCHAR[],"
        " active BOOLEAN)"
    )
    con.execute("CREATE TEMP TABLE e (event_type VARCHAR, tenant VARCHAR)")
    for n, (tenant, types, event_type, event_tenant) in enumerate(ROUTING):
        con.execute("DELETE FROM w")
        con.execute("DELETE FROM e")
        con.execute("INSERT INTO w VALUES (?, ?, ?, true)", [f"wh_{n}", tenant, types])
        con.execute("INSERT INTO e VALUES (?, ?)", [event_type, event_tenant])
        join = f"SELECT w.webhook_id FROM e JOIN w ON {MATCHES}"
        joined = [r[0] for r in con.execute(join).fetchall()]
        routes = Routes([(f"wh_{n}", tenant, types)])
        assert routes.takers(event_type, event_tenant) == joined, ROUTING[n]
