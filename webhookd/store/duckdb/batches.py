"""The delivery path of the DuckDB engine: rescue, ingest, scan, claim, record, release,
prune."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from webhookd.events import NewEvent
from webhookd.queue.conflicts import first_of_each, same_content
from webhookd.queue.pacing import Pace, cap, first_slot, tokens_now
from webhookd.queue.routes import Routes
from webhookd.states import Status
from webhookd.store.base import (
    RATE_LIMITED,
    Claim,
    ClaimRequest,
    EventConflict,
    IngestResult,
    Outcome,
    Pruned,
    ScanResult,
)
from webhookd.store.duckdb import operational
from webhookd.store.duckdb.common import (
    DUE_AFTER,
    HELD,
    Hook,
    active_hooks,
    before_commit,
    forget,
    known,
    note,
    park_inactive,
    remember,
    remembered,
    scanned_seq,
)
from webhookd.store.duckdb.fifo import settle_fifo
from webhookd.store.duckdb.fresh import FEW_EVENTS, FreshEvents
from webhookd.store.duckdb.queries import query
from webhookd.store.records import signing_secrets, utcnow

# ---------------------------------------------------------------------------------------
# Batch functions. Each runs on the writer thread inside a transaction the writer owns,
# takes every payload of its kind queued since the last commit, and returns one result
# per payload. Expected failures are returned as values so they do not abort the batch.
# ---------------------------------------------------------------------------------------


def rescue(con: Any, payloads: Sequence[datetime | None]) -> list[int]:
    results = []
    for expired_before in payloads:
        now = utcnow()
        rows = (
            con.execute(query("rescue_orphans"), [now, now])
            if expired_before is None
            else con.execute(query("rescue_expired"), [now, now, expired_before])
        ).fetchall()
        park_inactive(con, [r[0] for r in rows], now)
        settle_fifo(con, [r[0] for r in rows], now)
        results.append(len(rows))
    return results


def ingest(con: Any, payloads: Sequence[list[NewEvent]]) -> list[IngestResult | EventConflict]:
    """Insert the events, trusting the primary key to refuse an id already stored: looking
    every id up first costs a pass over the event ids (30 ms at a million events), the
    key's check about 2 us an event. A refused id fails the transaction; the store then
    retries with ingest_carefully, which tells a re-post from a conflict."""
    return _ingest_new(con, payloads, {})


def ingest_carefully(
    con: Any, payloads: Sequence[list[NewEvent]]
) -> list[IngestResult | EventConflict]:
    all_ids = list({e.event_id for events in payloads for e in events})
    existing: dict[str, tuple[str, str | None, bytes]] = {
        row[0]: (row[1], row[2], bytes(row[3]))
        for row in con.execute(query("ingest_known"), [all_ids]).fetchall()
    }
    return _ingest_new(con, payloads, existing)


def _ingest_new(
    con: Any,
    payloads: Sequence[list[NewEvent]],
    existing: dict[str, tuple[str, str | None, bytes]],
) -> list[IngestResult | EventConflict]:
    """Insert what is new; `existing` maps the ids already stored to (type, tenant, body)."""
    new_events: list[NewEvent] = []
    results: list[IngestResult | EventConflict] = []
    now = utcnow()
    for events in payloads:
        fresh, conflicts = first_of_each(events)
        conflicts += [
            e.event_id
            for e in fresh.values()
            if e.event_id in existing and not same_content(e, *existing[e.event_id])
        ]
        if conflicts:
            results.append(EventConflict(sorted(set(conflicts))))
            continue
        new = [e for e in fresh.values() if e.event_id not in existing]
        for event in new:
            existing[event.event_id] = (event.event_type, event.tenant, event.body)
        new_events.extend(new)
        results.append(IngestResult([e.event_id for e in events], len(new)))
    if len(new_events) == 1:
        (e,) = new_events
        (seq,) = con.execute(
            query("ingest_one"),
            [
                e.event_id,
                e.event_type,
                e.payload,
                e.body,
                e.occurred_at.replace(tzinfo=None),
                now,
                e.tenant,
                e.traceparent,
            ],
        ).fetchone()
        # For the main writer's next scan once this commits (fresh.py, enqueue_claimed).
        note(con, (seq, e.event_id, e.event_type, e.tenant, e.body, e.traceparent))
    elif new_events:
        con.execute(
            query("ingest"),
            [
                [e.event_id for e in new_events],
                [e.event_type for e in new_events],
                [e.payload for e in new_events],
                [e.body for e in new_events],
                [e.occurred_at.replace(tzinfo=None) for e in new_events],
                now,
                [e.tenant for e in new_events],
                [e.traceparent for e in new_events],
            ],
        )
    return results


def new_events_kick(con: Any, payloads: Sequence[None]) -> list[None]:
    """The kind of the ingest writer's kicks (Writer.kick): never run, it names the work
    that scans, and claims that wait for new events, ride with."""
    return [None] * len(payloads)


NEW_EVENTS = frozenset({new_events_kick})


# (batch size, claim request, whether the request stands only for enqueue_claimed: a
# claim of the pool's rides in the same transaction, see RemoteStore.scan)
ScanPayload = tuple[int, ClaimRequest | None, bool]


def scan(con: Any, payloads: Sequence[ScanPayload]) -> list[ScanResult]:
    return [
        scan_claim(con, batch_size, request, careful=False, direct_only=direct_only)
        for batch_size, request, direct_only in payloads
    ]


def scan_carefully(con: Any, payloads: Sequence[ScanPayload]) -> list[ScanResult]:
    return [
        scan_claim(con, batch_size, request, careful=True, direct_only=direct_only)
        for batch_size, request, direct_only in payloads
    ]


def scan_claim(
    con: Any,
    batch_size: int,
    request: ClaimRequest | None,
    *,
    careful: bool,
    direct_only: bool = False,
) -> ScanResult:
    """A scan, and with `request` a claim after it in the same transaction when it
    enqueued rows (Store.scan). The claim reads every due row, as `claim` does: what it
    leaves due is only what its limit left. A scan of a few events where `claim` would take
    every row they make enqueues them claimed (enqueue_claimed); `direct_only` claims
    nothing otherwise (a claim of the pool's follows in the same transaction)."""
    if request is not None and request.limit > 0 and not careful:
        claimed = enqueue_claimed(con, min(batch_size, FEW_EVENTS), request)
        if claimed is not None:
            return claimed
    if direct_only:
        request = None
    result = scan_once(con, batch_size, careful=careful)
    if request is None or request.limit <= 0 or not result.enqueued:
        return result
    (claims,) = claim(
        con, [(request.limit, request.per_webhook, request.lease, dict(request.caps))]
    )
    return replace(result, claims=claims, left_due=len(claims) >= request.limit)


def enqueue_claimed(con: Any, most: int, request: ClaimRequest) -> ScanResult | None:
    """scan_once and claim in one step for a scan of at most `most` events, as events come
    one at a time, when the claim would take every row they make: no other row is due (so
    none older waits) and each webhook they go to is plain (not fifo, not paced) and has
    room for them under its cap. Their rows are inserted inflight, leased as claim_take
    leaves them, and returned as claims. None: the scan is not small or the claim would
    not take them all, and the caller scans as before (nothing was written).

    The scan's join costs DuckDB 2.2 ms and claim's top-N and update 1.7 ms however few the
    rows; reading the few events whole, matching them in Python (queue/routes.py) and one
    INSERT cost about half of that (bench/README.md). The events the ingest writer has
    just committed are not even read, when they are all there is (fresh.py)."""
    cursor = remembered(con, "scan_cursor", scanned_seq)
    fresh: FreshEvents | None = getattr(con, "fresh", None)
    events: list[Any] | None = None if fresh is None else fresh.after(cursor, most)
    if events is None:
        events = con.execute(query("scan_few"), [cursor, most + 1]).fetchall()
        if len(events) > most:
            return None
        if not events:
            return ScanResult(0, 0, cursor)
        events.sort()
    routes = remembered(con, "routes", _read_routes)
    rows = [(w, e) for e in events for w in routes.takers(e[2], e[3])]
    if len(rows) > request.limit:
        return None
    now = utcnow()
    paces: dict[str, Pace] = {}
    if rows:
        paces = _paces(con)
        if any(w in paces for w, _ in rows) or due_after(con, now) is None:
            return None
        held = _held(con)
        wanted: dict[str, int] = {}
        for w, _ in rows:
            wanted[w] = wanted.get(w, 0) + 1
        caps = request.caps
        if any(
            held.get(w, 0) + n > cap(None, request.per_webhook, caps.get(w))
            for w, n in wanted.items()
        ):
            return None
    lease_until = now + timedelta(seconds=request.lease)
    if len(rows) == 1:
        ((w, (seq, event_id, _, _, body, traceparent)),) = rows
        con.execute(
            query("enqueue_claimed_one"),
            [w, event_id, now, lease_until, body, now, now, seq, traceparent],
        )
    elif rows:
        con.execute(
            query("enqueue_claimed"),
            [
                [w for w, _ in rows],
                [e[1] for _, e in rows],
                now,
                lease_until,
                [e[4] for _, e in rows],
                now,
                now,
                [e[0] for _, e in rows],
                [e[5] for _, e in rows],
            ],
        )
    if rows:
        for w, n in wanted.items():
            held[w] = held.get(w, 0) + n
    high = events[-1][0]
    con.execute(query("scan_advance"), [high, now])
    remember(con, "scan_cursor", high)
    if not rows:
        return ScanResult(len(events), 0, high, left_due=False)
    # Nothing else was due and these are inflight (DUE_AFTER holds): the next claim asks
    # claim_first first, if it asks.
    remember(con, "nothing_due", True)
    hooks = active_hooks(con, {w for w, _ in rows})
    picked = [(None, w, e[1], 0, 0, e[4], e[5], e[0]) for w, e in rows]
    claims = _claims(picked, hooks, paces, lease_until, now)
    result = ScanResult(len(events), len(rows), high, claims=claims, left_due=False)
    if request.early:
        # Their attempts may start while the transaction commits: the rows exist only in it.
        before_commit(con, result)
    return result


def _read_routes(con: Any) -> Routes:
    return Routes(con.execute(query("routes")).fetchall())


def scan_once(con: Any, batch_size: int, *, careful: bool, upto: int | None = None) -> ScanResult:
    """Enqueue the events after the cursor (at most `batch_size`, none after `upto`) and
    advance the cursor, in the caller's transaction.

    A (webhook, event) row can only exist already if something enqueued an event the
    cursor had not passed; replay scans first so that nothing does. So the insert needs
    no ON CONFLICT, which costs DuckDB a few milliseconds a statement however few the
    rows: `careful` adds it back for the retry after a conflict (see DuckDBStore.scan).
    """
    # The cursor moves only on the main writer's cursor (here and operational.write),
    # which remembers it: reading it inside scan_read cost 0.7 of its 1.7 ms.
    cursor = remembered(con, "scan_cursor", scanned_seq)
    n_events, high = con.execute(
        query("scan_read"),
        [cursor, upto if upto is not None else 2**62, batch_size],
    ).fetchone()
    if not n_events:
        return ScanResult(0, 0, cursor)
    now = utcnow()
    # A fifo webhook's new rows wait behind its head (no next_attempt_at); settle_fifo
    # makes the lowest due if the webhook had no head.
    (enqueued,) = con.execute(
        query("scan_enqueue_again" if careful else "scan_enqueue"),
        [now, now, now, cursor, high],
    ).fetchone()
    con.execute(query("scan_advance"), [high, now])
    remember(con, "scan_cursor", high)
    if enqueued:
        settle_fifo(con, None, now)
    return ScanResult(n_events, int(enqueued), high)


def _paces(con: Any) -> dict[str, Pace]:
    """The active webhooks with a setting of their own (fifo, max_in_flight, rate_limit):
    a few rows of the small webhooks table, remembered until it changes (a claim that
    draws on a rate limit's bucket writes it: see Cursor)."""
    return remembered(con, "paces", _read_paces)


def _read_paces(con: Any) -> dict[str, Pace]:
    return {r[0]: Pace(*r) for r in con.execute(query("paces")).fetchall()}


def claim(
    con: Any, payloads: Sequence[tuple[int, int, float, dict[str, int]]]
) -> list[list[Claim]]:
    """Due rows, oldest first, no webhook beyond its cap, now inflight.

    Cost must not grow with the backlog or the delivered rows: a few simple statements
    (DuckDB plans and runs each in about a millisecond, a composed query costs more):
    rows held per webhook; the webhooks with settings of their own; a top-N of due rows
    of webhooks below their cap, with their bodies; their webhooks; then the update by
    rowid (RETURNING on this table, which has a primary key, costs several times the
    update). Lists are matched with list_contains: `IN (SELECT unnest(?))` plans a
    semi-join that costs twice as much.

    A webhook's cap (queue/pacing.py): fifo 1, else what the pool asked, within its
    max_in_flight if it is rate-limited. Rows waiting behind a fifo head have no
    next_attempt_at and are never due. A rate-limited webhook takes a token per row; its
    candidates the bucket cannot serve are moved to the next free slots, once each.
    """
    results: list[list[Claim]] = []
    for limit, per_webhook, lease, caps in payloads:
        now = utcnow()
        after = known(con, DUE_AFTER)
        if (after is not None and now < after) or (
            remembered(con, "nothing_due", _unknown) and due_after(con, now) is not None
        ):
            results.append([])
            continue
        held = _held(con)
        paces = _paces(con)
        room = {w: cap(paces.get(w), per_webhook, caps.get(w)) for w in {*held, *caps, *paces}}
        full = [w for w, n in held.items() if n >= room[w]]
        reach = _reach(remembered(con, "routes", _read_routes).webhooks, room, held, per_webhook)
        most = limit * 4 if reach is None else min(limit * 4, reach)
        if most == 0:
            # No active webhook has room: none at all (so no row is due) unless some are full.
            remember(con, "nothing_due", not full)
            results.append([])
            continue
        candidates = con.execute(query("claim"), [now, full, most]).fetchall()
        # Only decides whether the next claim asks claim_first first: it reads the queue.
        remember(con, "nothing_due", not candidates)
        if not candidates:
            results.append([])
            continue
        hooks = active_hooks(con, {c[1] for c in candidates})
        strays = {c[1] for c in candidates} - hooks.keys()
        if strays:
            # Pending rows of a webhook that is gone or inactive: park them (Event.DISABLE)
            # rather than let them fill the head of the queue.
            park_inactive(con, list(strays), now)
        tokens = {w: tokens_now(p, now) for w, p in paces.items() if p.rate_limit is not None}
        taken: dict[str, list[int]] = {}  # rate-limited webhook: rowids handed out
        short: set[str] = set()  # rate-limited webhooks with due rows the bucket cannot serve
        rank: dict[str, int] = {}
        picked: list[Any] = []
        for row in candidates:
            webhook_id = row[1]
            if webhook_id in strays:
                continue
            n = rank[webhook_id] = rank.get(webhook_id, 0) + 1
            if held.get(webhook_id, 0) + n > room.get(webhook_id, per_webhook):
                continue  # waits for its cap, as it is
            if webhook_id in tokens and n > math.floor(tokens[webhook_id]):
                short.add(webhook_id)  # waits for a token
                continue
            if len(picked) == limit:
                continue  # left due for the next claim
            picked.append(row)
            if webhook_id in tokens:
                taken.setdefault(webhook_id, []).append(row[0])
        _pace_rate_limited(con, paces, tokens, taken, short, now)
        rowids = [p[0] for p in picked]
        lease_until = now + timedelta(seconds=lease)
        con.execute(query("claim_take"), [lease_until, now, rowids])
        for row in picked:
            held[row[1]] = held.get(row[1], 0) + 1
        # Every due row taken (it saw them all): the next claim asks claim_first first.
        if len(picked) == len(candidates) < most and not (full or short or strays):
            remember(con, "nothing_due", True)
        results.append(_claims(picked, hooks, paces, lease_until, now))
    return results


def _reach(
    active: frozenset[str], room: dict[str, int], held: dict[str, int], per_webhook: int
) -> int | None:
    """When one active webhook alone has room under its cap, the room it has left: all a
    claim can take, and so all the candidates it needs to read (at one webhook, 85 rows
    say, rather than four times what the pool asked: 1,628 rows with their bodies, 5.4 ms
    against 1.9 for a 20,000-row backlog). 0 when none has room; None when several have:
    their oldest rows may belong to one of them, and the claim reads more so that each
    can fill its room in one claim."""
    if len(active) - len(active & room.keys()) > 1:
        return None  # several webhooks hold nothing yet: each has room
    left = [room.get(w, per_webhook) - held.get(w, 0) for w in active]
    with_room = [n for n in left if n > 0]
    if len(with_room) > 1:
        return None
    return with_room[0] if with_room else 0


def _claims(
    picked: Sequence[Any],
    hooks: dict[str, Hook],
    paces: dict[str, Pace],
    lease_until: datetime,
    now: datetime,
) -> list[Claim]:
    """The claims of the rows picked: (rowid, webhook_id, event_id, attempts, retry_base,
    body, traceparent, seq) each, as claim reads them."""
    claims = []
    for _, webhook_id, event_id, attempts, base, body, traceparent, seq in picked:
        url, secret, prev, prev_exp, options = hooks[webhook_id]
        secrets = signing_secrets(secret, prev, prev_exp, now)
        pace = paces.get(webhook_id)
        claims.append(
            Claim(
                webhook_id,
                event_id,
                attempts + 1,
                attempts + 1 - base,
                url,
                secrets,
                bytes(body),
                lease_until,
                None if pace is None else pace.own_cap(),
                pace is not None and pace.paced,
                options,
                traceparent,
                seq,
            )
        )
    return claims


# Every seq a row can hold: the range of an outcome that does not carry its row's.
ANY_SEQ = (-(2**63), 2**63 - 1)


def _unknown(con: Any) -> bool:
    return False


def _held(con: Any) -> dict[str, int]:
    """Rows each webhook holds inflight (claim_held), remembered while the cursor keeps
    HELD: the caller adds what it claims."""
    return remembered(con, HELD, _read_held)


def _read_held(con: Any) -> dict[str, int]:
    return dict(con.execute(query("claim_held")).fetchall())


def due_after(con: Any, now: datetime) -> datetime | None:
    """None if a row a claim could take is due at `now`; else the time before which none
    is, remembered (DUE_AFTER: until a statement other than an outcome or a claim writes
    the queue, and record keeps it for the retries it schedules)."""
    after = known(con, DUE_AFTER)
    if after is not None and now < after:
        return after  # type: ignore[no-any-return]
    first: datetime | None = con.execute(query("claim_first")).fetchone()[0]
    if first is not None and first <= now:
        return None
    after = datetime.max if first is None else first
    remember(con, DUE_AFTER, after)
    return after


def _pace_rate_limited(
    con: Any,
    paces: dict[str, Pace],
    tokens: dict[str, float],
    taken: dict[str, list[int]],
    short: set[str],
    now: datetime,
) -> None:
    """Write back the buckets a claim drew on, and move every due row of a webhook whose
    bucket came up short (but those handed out) to its next free slots (queue/pacing.py),
    in one statement each: no attempt, no log row, and no later claim reads them before
    their time."""
    touched = sorted(w for w in tokens if w in taken or w in short)
    if not touched:
        return
    next_at: dict[str, datetime | None] = {w: paces[w].next_at for w in touched}
    for w in sorted(short):
        pace = paces[w]
        assert pace.rate_limit is not None
        first = first_slot(pace, tokens[w] - len(taken.get(w, ())), now)
        step = round(1_000_000 / pace.rate_limit)  # microseconds
        (moved,) = con.execute(
            query("claim_move"),
            [first, step, RATE_LIMITED, now, w, now, taken.get(w, [])],
        ).fetchone()
        next_at[w] = first + timedelta(microseconds=moved * step)
    con.execute(
        query("claim_buckets"),
        [
            now,
            touched,
            [tokens[w] - len(taken.get(w, ())) for w in touched],
            [next_at[w] for w in touched],
        ],
    )


def record(con: Any, outcomes: Sequence[Outcome]) -> list[bool]:
    """Apply outcomes in one UPDATE and log the attempts made in one INSERT. Whether rows
    of each outcome's webhook may be due (Store.record): not asked of the queue, which
    would cost a statement, but known while the time before which no row is due is
    (DUE_AFTER): then only a retry due now is, and the retries move that time. Otherwise
    True.

    An outcome that was not spent (the daemon's own resources failed, Outcome.spent)
    sets the row's state, next attempt and error but keeps its attempt count and last
    attempt time, and writes no log row: the log is what auto-disable reads."""
    now = utcnow()
    if len(outcomes) == 1:
        applied = _record_one(con, outcomes[0], now)
    else:
        applied = _record_many(con, outcomes, now)
    held = known(con, HELD)
    if held is not None:
        # Each outcome applied frees its row's slot; one that was not (a stale lease)
        # leaves the count unknown.
        if applied == len(outcomes):
            for o in outcomes:
                held[o.webhook_id] = held.get(o.webhook_id, 0) - 1
        if applied != len(outcomes) or min(held.values(), default=0) < 0:
            forget(con, HELD)
    gone = list({o.webhook_id for o in outcomes if o.deactivate_webhook})
    gone_rows = con.execute(query("record_gone"), [now, gone]).fetchall() if gone else []
    if gone_rows or any(o.status is Status.DEAD for o in outcomes):
        operational.after_outcomes(con, outcomes, gone_rows, now)
    retried = [o.webhook_id for o in outcomes if o.status is Status.PENDING] + gone
    if retried:
        park_inactive(con, retried, now)
    # A fifo head that finished lets the next row through; a retry keeps its place.
    settle_fifo(con, [o.webhook_id for o in outcomes], now)
    after = known(con, DUE_AFTER)
    if after is None:
        return [True] * len(outcomes)
    retries = [
        o.next_attempt_at
        for o in outcomes
        if o.status is Status.PENDING and o.next_attempt_at is not None
    ]
    if retries:
        remember(con, DUE_AFTER, min(after, *retries))
    return [
        o.status is Status.PENDING and o.next_attempt_at is not None and o.next_attempt_at <= now
        for o in outcomes
    ]


def _record_one(con: Any, o: Outcome, now: datetime) -> int:
    """record's statements for a batch of one outcome, as at low rates, where DuckDB
    spends more on the list form's join than on the row (see record_one). How many rows
    it changed (0: the row no longer held the claim's lease)."""
    (applied,) = con.execute(
        query("record_one"),
        [
            str(o.status),
            o.spent,
            o.attempt,
            o.next_attempt_at,
            o.status_code,
            o.error,
            o.attempted_at,
            now,
            o.webhook_id,
            o.event_id,
            o.claimed_until,
            *_seqs([o]),
        ],
    ).fetchone()
    if o.spent:
        con.execute(
            query("record_attempt"),
            [
                o.webhook_id,
                o.event_id,
                o.attempt,
                o.attempted_at,
                o.duration_ms,
                o.status_code,
                o.error,
                o.response_excerpt,
                o.outcome,
            ],
        )
    return int(applied)


def _seqs(outcomes: Sequence[Outcome]) -> tuple[int, int]:
    """The range of seqs the outcomes' rows hold (Claim.seq), or every seq when one does
    not say."""
    seqs = [o.seq for o in outcomes]
    if any(seq is None for seq in seqs):
        return ANY_SEQ
    known = [seq for seq in seqs if seq is not None]
    return min(known), max(known)


def _record_many(con: Any, outcomes: Sequence[Outcome], now: datetime) -> int:
    columns = [
        [o.webhook_id for o in outcomes],
        [o.event_id for o in outcomes],
        [str(o.status) for o in outcomes],
        [o.attempt for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        [o.status_code for o in outcomes],
        [o.error for o in outcomes],
        [o.attempted_at for o in outcomes],
        [o.claimed_until for o in outcomes],
        [o.spent for o in outcomes],
    ]
    (applied,) = con.execute(query("record"), [now, *columns, *_seqs(outcomes)]).fetchone()
    made = [o for o in outcomes if o.spent]
    if made:
        con.execute(
            query("record_attempts"),
            [
                [o.webhook_id for o in made],
                [o.event_id for o in made],
                [o.attempt for o in made],
                [o.attempted_at for o in made],
                [o.duration_ms for o in made],
                [o.status_code for o in made],
                [o.error for o in made],
                [o.response_excerpt for o in made],
                [o.outcome for o in made],
            ],
        )
    return int(applied)


def release(con: Any, payloads: Sequence[list[tuple[str, str]]]) -> list[int]:
    now = utcnow()
    results = []
    for keys in payloads:
        if not keys:
            results.append(0)
            continue
        rows = con.execute(
            query("release"), [now, now, [k[0] for k in keys], [k[1] for k in keys]]
        ).fetchall()
        park_inactive(con, [r[0] for r in rows], now)
        settle_fifo(con, [r[0] for r in rows], now)
        results.append(len(rows))
    return results


def prune(con: Any, payloads: Sequence[tuple[datetime, datetime, int]]) -> list[Pruned]:
    results = []
    for delivered_before, log_before, batch in payloads:
        queue_rows = con.execute(query("prune_delivered"), [delivered_before, batch]).fetchall()
        log_rows = con.execute(query("prune_attempts"), [log_before, batch]).fetchall()
        results.append(Pruned(len(queue_rows), len(log_rows)))
    return results
