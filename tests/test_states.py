"""The delivery state machine, as a table: (state, event) -> next state."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from datetime import datetime

import pytest

from webhookd.attempts import AttemptResult
from webhookd.states import (
    TRANSITIONS,
    Event,
    IllegalTransition,
    Status,
    Verdict,
    classify,
    outcome_event,
    sources,
    transition,
)
from webhookd.store.base import Claim
from webhookd.workers import RetryPolicy, decide, decide_failure

P, F, D, X, K = Status.PENDING, Status.INFLIGHT, Status.DELIVERED, Status.DEAD, Status.PARKED

TABLE = [
    (P, Event.CLAIM, F),
    (P, Event.DISABLE, K),
    (F, Event.SUCCESS, D),
    (F, Event.FAILURE, P),
    (F, Event.EXHAUSTED, X),
    (F, Event.GONE, K),
    (F, Event.LEASE_EXPIRED, P),
    (F, Event.RELEASE, P),
    (K, Event.ENABLE, P),
    (K, Event.REDRIVE, P),
    (X, Event.REDRIVE, P),
    (D, Event.REPLAY, P),
    (X, Event.REPLAY, P),
    (K, Event.REPLAY, P),
]


@pytest.mark.parametrize(("state", "event", "expected"), TABLE)
def test_transition_table(state: Status, event: Event, expected: Status) -> None:
    assert transition(state, event) is expected


def test_table_is_the_whole_machine() -> None:
    assert {(s, e): n for s, e, n in TABLE} == TRANSITIONS


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s, e in itertools.product(Status, Event) if (s, e) not in TRANSITIONS],
)
def test_every_other_pair_is_illegal(state: Status, event: Event) -> None:
    with pytest.raises(IllegalTransition):
        transition(state, event)


def test_delivered_is_left_only_by_replay() -> None:
    assert [e for (s, e) in TRANSITIONS if s is D] == [Event.REPLAY]


def test_sources_name_the_states_an_event_applies_to() -> None:
    assert sources(Event.REDRIVE) == (K, X)
    assert set(sources(Event.REPLAY)) == {D, X, K}
    assert sources(Event.CLAIM) == (P,)


@pytest.mark.parametrize(
    ("code", "verdict", "honour_retry_after"),
    [
        (200, Verdict.DELIVERED, False),
        (204, Verdict.DELIVERED, False),
        (299, Verdict.DELIVERED, False),
        (301, Verdict.RETRY, False),
        (302, Verdict.RETRY, False),
        (400, Verdict.RETRY, False),
        (410, Verdict.GONE, False),
        (429, Verdict.RETRY, True),
        (500, Verdict.RETRY, False),
        (503, Verdict.RETRY, True),
        (None, Verdict.RETRY, False),
    ],
)
def test_classify(code: int | None, verdict: Verdict, honour_retry_after: bool) -> None:
    got = classify(code)
    assert (got.verdict, got.honour_retry_after) == (verdict, honour_retry_after)


@pytest.mark.parametrize(
    ("verdict", "attempt", "event"),
    [
        (Verdict.DELIVERED, 8, Event.SUCCESS),
        (Verdict.GONE, 1, Event.GONE),
        (Verdict.RETRY, 1, Event.FAILURE),
        (Verdict.RETRY, 7, Event.FAILURE),
        (Verdict.RETRY, 8, Event.EXHAUSTED),
        (Verdict.RETRY, 9, Event.EXHAUSTED),
    ],
)
def test_outcome_event_uses_the_budget(verdict: Verdict, attempt: int, event: Event) -> None:
    assert outcome_event(verdict, attempt, max_attempts=8) is event


def _claim(attempt: int, budget: int | None = None) -> Claim:
    return Claim("wh", "evt", attempt, budget or attempt, "http://x", ("whsec_x",), b"{}")


def _result(code: int | None, retry_after: float | None = None) -> AttemptResult:
    return AttemptResult(
        status_code=code,
        error=None if code and code < 300 else "failed",
        duration_ms=1.0,
        response_excerpt="",
        retry_after=retry_after,
    )


POLICY = RetryPolicy(max_attempts=3, schedule=[5.0, 60.0], jitter=0.0)
NOW = datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("code", "attempt", "status", "delay", "deactivate"),
    [
        (204, 1, D, None, False),
        (500, 1, P, 5.0, False),
        (500, 2, P, 60.0, False),
        (500, 3, X, None, False),
        (None, 1, P, 5.0, False),
        (302, 1, P, 5.0, False),
        (410, 1, K, None, True),
        (429, 1, P, 5.0, False),
    ],
)
def test_decide(
    code: int | None, attempt: int, status: Status, delay: float | None, deactivate: bool
) -> None:
    outcome = decide(_claim(attempt), _result(code), POLICY, NOW)
    assert outcome.status is status
    assert outcome.attempt == attempt
    assert outcome.deactivate_webhook is deactivate
    if delay is None:
        assert outcome.next_attempt_at is None
    else:
        assert outcome.next_attempt_at is not None
        assert (outcome.next_attempt_at - NOW).total_seconds() == delay


def test_decide_honours_retry_after_on_429_and_503_only() -> None:
    for code, expected in ((429, 600.0), (503, 600.0), (500, 5.0)):
        outcome = decide(_claim(1), _result(code, retry_after=600.0), POLICY, NOW)
        assert outcome.next_attempt_at is not None
        assert (outcome.next_attempt_at - NOW).total_seconds() == expected


def test_decide_counts_the_budget_from_the_last_redrive() -> None:
    # attempt 10 overall, but only the 1st since an operator redrove it: retry, not dead
    outcome = decide(_claim(10, budget=1), _result(500), POLICY, NOW)
    assert outcome.status is P and outcome.attempt == 10


def test_decide_with_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy(max_attempts=3, schedule=[100.0], jitter=0.2)
    random.seed(7)
    for _ in range(200):
        outcome = decide(_claim(1), _result(500), policy, NOW)
        assert outcome.next_attempt_at is not None
        assert 80.0 <= (outcome.next_attempt_at - NOW).total_seconds() <= 120.0


def test_every_outcome_carries_its_claims_seq_and_lease() -> None:
    """The store finds the outcome's row by them (Claim.seq, Claim.claimed_until)."""
    claim = replace(_claim(1), seq=7, claimed_until=NOW)
    local = AttemptResult(None, "too many open files", 1.0, "", None, local_failure=True)
    outcomes = [decide(claim, _result(code), POLICY, NOW) for code in (204, 500, 410)]
    outcomes.append(decide(claim, local, POLICY, NOW))
    outcomes.append(decide_failure(claim, _result(500), RetryPolicy(0, [], 0.0), NOW))
    assert {(o.seq, o.claimed_until) for o in outcomes} == {(7, NOW)}
