"""A webhook's pace, as a claim applies it: its own cap, its token bucket, the slots of the
rows the bucket cannot serve yet. The DuckDB engine calls these; the PostgreSQL engine
does the same arithmetic in its claim statement (sql/postgresql/queries.sql, `claim`), and
tests/test_store.py holds both to it.

The bucket: `rate_limit` tokens a second, at most `burst(rate_limit)` of them (one second's
worth, at least one); a claim takes one token per row it hands out. A claim that meets
more due rows of a webhook than its bucket holds moves every due row of that webhook it
does not hand out to the next free slots, in their order: the first at the moment the
next token arrives (or the webhook's `rate_next_at`, the slot after the last one given
out, if that is later), the others 1/rate seconds apart. A moved row is no attempt (no
log row, its attempts unchanged); its next_attempt_at says when it is due, its
last_error that it waits for the rate limit. Rows in the future are out of the claims'
way: a row is moved once when it becomes due (again if a newer row took its token), so a
backlog behind a rate limit costs a claim nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from webhookd.store.base import Ordering, burst


@dataclass(slots=True)
class Pace:
    """One webhook's delivery settings and bucket, as stored."""

    webhook_id: str
    ordering: str
    max_in_flight: int | None
    rate_limit: float | None
    tokens: float | None  # as of refilled_at; None: a full bucket
    refilled_at: datetime | None
    next_at: datetime | None  # the next free slot for rows the bucket moved

    @property
    def fifo(self) -> bool:
        return self.ordering == Ordering.FIFO

    @property
    def paced(self) -> bool:
        """Handed out only what may start now: never claimed ahead."""
        return self.fifo or self.rate_limit is not None

    def own_cap(self) -> int | None:
        """Its own cap on concurrent attempts; None: the daemon's per_webhook."""
        return 1 if self.fifo else self.max_in_flight


def cap(
    pace: Pace | None,
    per_webhook: int,
    asked: int | None,
    *,
    silent: bool = False,
    alone: bool = True,
) -> int:
    """The most rows a webhook may hold inflight after a claim. One for a fifo webhook or
    a silent one (its last attempt got no answer); else its own cap (max_in_flight, or
    the daemon's `per_webhook`), unless the worker pool asks for a cap of its own
    (`asked`: a few rounds more for a fast receiver, one for a silent one): that one when
    this daemon is `alone` in holding the webhook's rows and the webhook is not
    rate-limited (never claimed ahead), else within the webhook's own. The PostgreSQL
    claim applies the same rule in SQL (`CAP` in sql/postgresql/queries.sql); DuckDB,
    one daemon, calls this."""
    if silent or (pace is not None and pace.fifo):
        return 1
    own = (None if pace is None else pace.own_cap()) or per_webhook
    if asked is None:
        return own
    if alone and (pace is None or pace.rate_limit is None):
        return asked
    return min(asked, own)


def running_cap(own_cap: int | None, per_webhook: int, *, silent: bool) -> int:
    """Attempts a webhook may have running at once in one daemon: one while its receiver
    does not answer (as a circuit breaker half-open: one probe at a time), else its own
    cap (fifo one, max_in_flight) or `per_webhook`."""
    if silent:
        return 1
    return own_cap or per_webhook


def tokens_now(pace: Pace, now: datetime) -> float:
    """The bucket's tokens at `now`, refilled since it was last written (a bucket never
    written is full). The PostgreSQL claim computes the same in SQL (`TOKENS` in
    sql/postgresql/queries.sql)."""
    assert pace.rate_limit is not None
    full = burst(pace.rate_limit)
    if pace.tokens is None:
        return full
    since = pace.refilled_at
    elapsed = 0.0 if since is None else max(0.0, (now - since).total_seconds())
    return min(full, pace.tokens + elapsed * pace.rate_limit)


def first_slot(pace: Pace, left: float, now: datetime) -> datetime:
    """When the first of the rows the bucket cannot serve is due: the next token (the
    bucket holds `left` after this claim), or the webhook's next free slot if later."""
    assert pace.rate_limit is not None
    first = now + timedelta(seconds=max(0.0, 1.0 - left) / pace.rate_limit)
    if pace.next_at is not None and pace.next_at > first:
        first = pace.next_at
    return first
