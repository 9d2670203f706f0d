"""The engine-free rules of webhookd/queue/, as tables: what both engines carry out."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.pg import PgCluster
from webhookd.queue.pacing import Pace, cap, tokens_now
from webhookd.queue.webhooks import DISABLED_BY_OPERATOR, plan_patch
from webhookd.store.base import Ordering, WebhookPatch
from webhookd.store.postgres import queries as postgres_queries

NOW = datetime(2026, 1, 1, 12, 0, 0)


def pace(
    ordering: str = "none",
    max_in_flight: int | None = None,
    rate_limit: float | None = None,
    tokens: float | None = None,
    refilled_at: datetime | None = None,
) -> Pace:
    return Pace("wh_1", ordering, max_in_flight, rate_limit, tokens, refilled_at, None)


def test_enabling_a_disabled_webhook_resets_its_health_and_redrives_its_parked_rows() -> None:
    plan = plan_patch(WebhookPatch(active=True), False, pace(), NOW)
    assert plan.sets == {
        "updated_at": NOW,
        "rate_next_at": None,
        "active": True,
        "disabled_reason": None,
        "failing_since": None,
        "health_reset_at": NOW,
        # A new episode: the operational `enabled` event says it, no `recovered` follows.
        "failing_reported": None,
    }
    assert (plan.enable, plan.park) == (True, False)


def test_disabling_parks_and_says_who_disabled_it() -> None:
    plan = plan_patch(WebhookPatch(active=False), True, pace(), NOW)
    assert plan.sets["disabled_reason"] == DISABLED_BY_OPERATOR
    assert (plan.enable, plan.park) == (False, True)
    # Already inactive: parked again (rows enqueued meanwhile), the reason kept.
    again = plan_patch(WebhookPatch(active=False), False, pace(), NOW)
    assert "disabled_reason" not in again.sets and again.park


def test_a_new_rate_keeps_the_tokens_within_its_burst_and_voids_the_slots() -> None:
    old = pace(rate_limit=10.0, tokens=2.0, refilled_at=NOW - timedelta(seconds=0.5))
    plan = plan_patch(WebhookPatch(rate_limit=4.0), True, old, NOW)
    # 2 + 0.5 s x 10/s = 7 tokens, within the new burst of 4.
    assert plan.sets["rate_tokens"] == 4.0
    assert plan.sets["rate_limit"] == 4.0 and plan.sets["rate_next_at"] is None
    assert plan.rate_limited_due
    cleared = plan_patch(WebhookPatch(rate_limit=None), True, old, NOW)
    assert cleared.sets["rate_tokens"] is None and cleared.rate_limited_due
    same = plan_patch(WebhookPatch(rate_limit=10.0), True, old, NOW)
    assert "rate_limit" not in same.sets and not same.rate_limited_due


def test_leaving_fifo_makes_the_waiting_rows_due() -> None:
    plan = plan_patch(WebhookPatch(ordering=Ordering.NONE), True, pace("fifo"), NOW)
    assert plan.sets["ordering"] == "none" and plan.waiting_due
    into = plan_patch(WebhookPatch(ordering=Ordering.FIFO), True, pace(), NOW)
    assert into.sets["ordering"] == "fifo" and not into.waiting_due


def test_an_empty_patch_writes_only_the_time() -> None:
    plan = plan_patch(WebhookPatch(), True, pace(max_in_flight=3), NOW)
    assert plan.sets == {"updated_at": NOW}
    assert not (plan.rate_limited_due or plan.waiting_due or plan.enable or plan.park)


# fifo, rate_limit, max_in_flight, silent, alone, asked -> cap (per_webhook 4)
CAPS: list[tuple[bool, float | None, int | None, bool, bool, int | None, int]] = [
    (False, None, None, False, True, None, 4),  # the daemon's per_webhook
    (False, None, 2, False, True, None, 2),  # its own max_in_flight
    (True, None, None, False, True, 12, 1),  # fifo: one, whatever is asked
    (False, None, None, True, True, 12, 1),  # silent: one probe at a time
    (False, None, 2, False, True, 12, 12),  # alone, a fast receiver: claimed ahead
    (False, None, 2, False, False, 12, 2),  # other daemons hold rows: within its own
    (False, None, None, False, False, 1, 1),  # asked for fewer: fewer
    (False, 5.0, 2, False, True, 12, 2),  # rate-limited: never claimed ahead
    (False, 5.0, None, False, True, 1, 1),
]


@pytest.mark.parametrize(("fifo", "rate", "own", "silent", "alone", "asked", "expected"), CAPS)
def test_a_webhooks_cap_in_python(
    fifo: bool,
    rate: float | None,
    own: int | None,
    silent: bool,
    alone: bool,
    asked: int | None,
    expected: int,
) -> None:
    the_pace = pace("fifo" if fifo else "none", own, rate)
    assert cap(the_pace, 4, asked, silent=silent, alone=alone) == expected


async def test_a_webhooks_cap_in_postgresql_sql_is_the_same_rule(pg: PgCluster) -> None:
    """The CAP fragment of the PostgreSQL claim, run alone on the same table."""
    fragment = postgres_queries.queries()["CAP"]
    con = await asyncpg.connect(pg.url)
    try:
        for fifo, rate, own, silent, alone, asked, expected in CAPS:
            got = await con.fetchval(
                f"SELECT {fragment} FROM (VALUES ($1::bool, $2::bool, $3::bool, $4::int, "
                "$5::int, $6::float8, 4)) AS h(silent, fifo, alone, asked, own_cap, rate, "
                "per_webhook)",
                silent,
                fifo,
                alone,
                asked,
                1 if fifo else own,
                rate,
            )
            assert got == expected, (fifo, rate, own, silent, alone, asked)
    finally:
        await con.close()


# rate_limit, tokens, refilled seconds before NOW (None: never) -> tokens at NOW
BUCKETS: list[tuple[float, float | None, float | None, float]] = [
    (10.0, None, None, 10.0),  # never written: full
    (10.0, 2.0, 0.5, 7.0),  # refilled at 10/s for half a second
    (10.0, 2.0, 5.0, 10.0),  # never beyond one second's worth
    (0.5, 0.0, 1.0, 0.5),  # a slow limit still holds one token at most
    (0.5, 0.0, 10.0, 1.0),
    (10.0, 3.0, -2.0, 3.0),  # written in the future (another clock): no refill
    (10.0, 3.0, None, 3.0),
]


@pytest.mark.parametrize(("rate", "tokens", "ago", "expected"), BUCKETS)
def test_the_token_bucket_in_python(
    rate: float, tokens: float | None, ago: float | None, expected: float
) -> None:
    refilled = None if ago is None else NOW - timedelta(seconds=ago)
    assert tokens_now(pace(rate_limit=rate, tokens=tokens, refilled_at=refilled), NOW) == (
        pytest.approx(expected)
    )


async def test_the_token_bucket_in_postgresql_sql_is_the_same_rule(pg: PgCluster) -> None:
    fragment = postgres_queries.queries()["TOKENS"]
    con = await asyncpg.connect(pg.url)
    try:
        for rate, tokens, ago, expected in BUCKETS:
            refilled = None if ago is None else NOW - timedelta(seconds=ago)
            got = await con.fetchval(
                f"SELECT {fragment} FROM (VALUES ($1::float8, $2::float8, $3::timestamp)) "
                "AS w(rate_limit, rate_tokens, rate_refilled_at) "
                "CROSS JOIN (SELECT $4::timestamp AS now) clock",
                rate,
                tokens,
                refilled,
                NOW,
            )
            assert got == pytest.approx(expected), (rate, tokens, ago)
    finally:
        await con.close()
