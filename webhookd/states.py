"""The life of a delivery, written once.

    pending --claim--> inflight --success------> delivered
                                --failure------> pending (retry later) | dead (attempts used up)
                                --gone (410)---> parked (webhook deactivated)
                                --expired/released--> pending
    pending --webhook disabled/removed--> parked
    parked  --webhook enabled / redrive--> pending
    dead    --redrive--> pending
    any finished state --replay--> pending

The SQL in the store applies these transitions in bulk; it names states and events from
here, and tests/test_states.py checks the table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    PENDING = "pending"
    INFLIGHT = "inflight"
    DELIVERED = "delivered"
    DEAD = "dead"
    PARKED = "parked"


class Event(enum.StrEnum):
    CLAIM = "claim"
    SUCCESS = "success"
    FAILURE = "failure"  # retryable, attempts remain
    EXHAUSTED = "exhausted"  # retryable, but max_attempts reached
    GONE = "gone"  # 410: the receiver asked us to stop
    LEASE_EXPIRED = "lease_expired"
    RELEASE = "release"  # shutdown hands unstarted or unfinished work back
    DISABLE = "disable"  # webhook deactivated or removed
    ENABLE = "enable"
    REDRIVE = "redrive"
    REPLAY = "replay"


TRANSITIONS: dict[tuple[Status, Event], Status] = {
    (Status.PENDING, Event.CLAIM): Status.INFLIGHT,
    (Status.PENDING, Event.DISABLE): Status.PARKED,
    (Status.INFLIGHT, Event.SUCCESS): Status.DELIVERED,
    (Status.INFLIGHT, Event.FAILURE): Status.PENDING,
    (Status.INFLIGHT, Event.EXHAUSTED): Status.DEAD,
    (Status.INFLIGHT, Event.GONE): Status.PARKED,
    (Status.INFLIGHT, Event.LEASE_EXPIRED): Status.PENDING,
    (Status.INFLIGHT, Event.RELEASE): Status.PENDING,
    (Status.PARKED, Event.ENABLE): Status.PENDING,
    (Status.PARKED, Event.REDRIVE): Status.PENDING,
    (Status.DEAD, Event.REDRIVE): Status.PENDING,
    (Status.DELIVERED, Event.REPLAY): Status.PENDING,
    (Status.DEAD, Event.REPLAY): Status.PENDING,
    (Status.PARKED, Event.REPLAY): Status.PENDING,
}


class IllegalTransition(ValueError):
    pass


def transition(status: Status, event: Event) -> Status:
    try:
        return TRANSITIONS[(status, event)]
    except KeyError:
        raise IllegalTransition(f"no transition from {status} on {event}") from None


def sources(event: Event) -> tuple[Status, ...]:
    """The states an event applies to, for the SQL that applies it in bulk."""
    return tuple(s for (s, e) in TRANSITIONS if e is event)


class Verdict(enum.StrEnum):
    """What an HTTP attempt's result means for the delivery."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Classified:
    verdict: Verdict
    honour_retry_after: bool


def classify(status_code: int | None) -> Classified:
    """2xx delivered; 410 gone; 429/503 retry honouring Retry-After; all else retry."""
    if status_code is not None and 200 <= status_code < 300:
        return Classified(Verdict.DELIVERED, False)
    if status_code == 410:
        return Classified(Verdict.GONE, False)
    return Classified(Verdict.RETRY, status_code in (429, 503))


def outcome_event(verdict: Verdict, attempts_in_budget: int, max_attempts: int) -> Event:
    """The event of an attempt: a retry becomes EXHAUSTED once the budget is used."""
    if verdict is Verdict.DELIVERED:
        return Event.SUCCESS
    if verdict is Verdict.GONE:
        return Event.GONE
    return Event.EXHAUSTED if attempts_in_budget >= max_attempts else Event.FAILURE
