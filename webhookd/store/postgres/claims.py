"""The claim: due rows leased to this daemon, within every webhook's cap, in one transaction.

Claims of one webhook are serialised across daemons, claims of different webhooks run at
once (claim_hooks in queries.sql: a transaction advisory lock per webhook). On the way, rows of
webhooks inactive or gone are parked and rows waiting for a rate limit's bucket are moved
to their slots, so that they are not read again at the head of the queue.
"""

from __future__ import annotations

from typing import Any

from webhookd import network
from webhookd.store.base import RATE_LIMITED, Claim
from webhookd.store.postgres.common import park_inactive
from webhookd.store.postgres.queries import query
from webhookd.store.records import signing_secrets

Connection = Any  # asyncpg has no type stubs

# Candidate rows a claim reads per row it may take: rows of webhooks with little room
# left are skipped after the LIMIT (as on DuckDB).
CANDIDATES_PER_ROW = 4
# Rows a claim moves at most per rate-limited webhook (claim_move in queries.sql).
MOVE_BATCH = 5000
# Webhooks one claim draws from at most (each a lock of the transaction's: claim_hooks).
HOOKS_PER_CLAIM = 64


async def claim(
    con: Connection,
    daemon_id: str,
    fifo_webhooks: set[str],
    limit: int,
    per_webhook: int,
    lease: float,
    cap_ids: list[str],
    cap_values: list[int],
) -> list[Claim]:
    """The claims, oldest first, in a transaction of their own. `fifo_webhooks` (the
    store's) is kept current with the webhooks claimed: outcomes of fifo webhooks are
    recorded with their order settled."""
    async with con.transaction():
        claims, _ = await take(
            con, None, daemon_id, fifo_webhooks, limit, per_webhook, lease, cap_ids, cap_values
        )
    return claims


async def take(
    con: Connection,
    only: list[str] | None,
    daemon_id: str,
    fifo_webhooks: set[str],
    limit: int,
    per_webhook: int,
    lease: float,
    cap_ids: list[str],
    cap_values: list[int],
) -> tuple[list[Claim], bool]:
    """`claim` in the caller's transaction, and whether it may have left rows due: it
    took `limit` rows, or passed over webhooks with room and a due row (their claim locks
    held by other claims, or more of them than one claim draws from).

    With `only` (a scan's claim, scans.py: the webhooks it enqueued rows for), the claim
    never waits for a lock: its transaction holds the scan lock and fifo locks, and a
    wait there could close a cycle with a transaction that holds what it waits for and
    waits for those. So it draws only from webhooks whose claim locks it gets at once,
    and the caller leaves rate-limited webhooks out (their buckets are rows of webhooks
    that an outcome's transaction may hold while it waits for a fifo lock)."""
    # Claims of one webhook run one at a time across daemons, claims of different
    # webhooks at once (claim_hooks in queries.sql).
    found = await con.fetch(
        query("claim_hooks"), daemon_id, per_webhook, cap_ids, cap_values, HOOKS_PER_CLAIM, only
    )
    hooks = [r["webhook_id"] for r in found if r["locked"]]
    passed_over = len(hooks) < len(found) or len(found) >= HOOKS_PER_CLAIM
    if not hooks:
        if not found or only is not None:
            return [], passed_over
        await con.execute(query("claim_wait"), found[0]["webhook_id"])
        hooks = [found[0]["webhook_id"]]
    rows = await con.fetch(
        query("claim"),
        limit,
        per_webhook,
        cap_ids,
        cap_values,
        limit * CANDIDATES_PER_ROW,
        float(lease),
        daemon_id,
        hooks,
    )
    strays = [r["webhook_id"] for r in rows if r["kind"] == "stray"]
    if strays:
        # Pending rows of a webhook inactive or gone: parked, not left at the head.
        await park_inactive(con, strays, rows[0]["now"])
    short = [r for r in rows if r["kind"] == "short"]
    if short:
        # Rows waiting for a rate limit's bucket: to their slots, out of the way.
        await con.execute(
            query("claim_move"),
            [r["webhook_id"] for r in short],
            [r["first_slot"] for r in short],
            [r["rate"] for r in short],
            short[0]["now"],
            RATE_LIMITED,
            MOVE_BATCH,
        )
    claimed = [r for r in rows if r["kind"] == "claimed"]
    for r in claimed:
        (fifo_webhooks.add if r["fifo"] else fifo_webhooks.discard)(r["webhook_id"])
    claimed.sort(key=lambda r: (r["next_attempt_at"], r["webhook_id"], r["event_id"]))
    claims = []
    for r in claimed:
        attempt = r["attempts"] + 1
        claims.append(
            Claim(
                r["webhook_id"],
                r["event_id"],
                attempt,
                attempt - r["retry_base"],
                r["url"],
                signing_secrets(
                    r["secret"],
                    r["previous_secret"],
                    r["previous_secret_expires_at"],
                    r["now"],
                ),
                bytes(r["body"]),
                r["lease_until"],
                r["own_cap"],
                bool(r["paced"]),
                network.decode(r["delivery_options"]),
                r["traceparent"],
            )
        )
    return claims, passed_over or len(claims) >= limit
