"""What a claim costs with many rows waiting behind a fifo head or a rate limit (issue 12).

    python -m bench.claim_cost [--engine duckdb|postgresql|both] [--waiting 100000]
                               [--claims 40] [--cases base,fifo,rate,capped,burst]

Each case builds a queue in SQL on a fresh database (a DuckDB file, or a schema on a
throwaway PostgreSQL server from tests/kit/pg.py), then times the claim itself: the engine's
claim code (DuckDB's `_claim` on a connection set up as the store's, PostgreSQL's claim
statement with its lock), claim(128, per_webhook 8), each inside a transaction that is
rolled back, so that every claim meets the same queue and no commit (an fsync) is timed.
The queue always holds BASE_HOOKS webhooks with ROWS_PER_HOOK due rows each, their rows
interleaved by seq with the case's own:

  base    nothing else
  delivered  a plain webhook with N delivered rows (retention keeps them for an hour): a
          queue of the same size with nothing waiting, to compare the next three with
  fifo    a fifo webhook with N rows waiting behind its head (inflight)
  rate    a webhook limited to 1/s with N rows its bucket moved to their slots
  capped  a plain webhook at its cap (8 inflight) with N due rows: where the waiting rows
          would be if they stayed in the due set (the claim excludes the webhook, but its
          rows sit in the range the claim reads)
  burst   a webhook limited to 1/s whose N rows are all due at once (a redrive, say): the
          claim that meets them moves them; timed as it is (every claim rolls back)

`base`, `delivered` and `capped` use nothing of issue 12: run them with PYTHONPATH pointing
at an older tree to time the code before it. Prints one line per case: min, median and p90
in ms. The burst case on PostgreSQL moves at most MOVE_BATCH rows per claim (store.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.kit.pg import drop_schema, fresh_schema, pg_cluster
from webhookd.signing import new_secret
from webhookd.store.base import Store
from webhookd.store.duckdb.store import DuckDBStore
from webhookd.store.postgres import PostgresStore

BASE_HOOKS = 20
ROWS_PER_HOOK = 500
LIMIT, PER_WEBHOOK, LEASE = 128, 8, 30.0
CASES = ("base", "delivered", "fifo", "rate", "capped", "burst")

Sql = Callable[[str], Awaitable[None]]

try:  # the code of issue 12 or later: queue rows carry their event's seq
    from webhookd.store.base import WebhookLimits  # noqa: F401

    SEQ = True
except ImportError:  # an older tree (PYTHONPATH): only `base` and `capped` make sense
    SEQ = False


async def new_hook(store: Store, **limits: Any) -> str:
    if limits:
        from webhookd.store.base import Ordering, WebhookLimits

        if "ordering" in limits:
            limits["ordering"] = Ordering(limits["ordering"])
        created = await store.create_webhook(
            "http://127.0.0.1:9/h", [], new_secret(), "", WebhookLimits(**limits)
        )
    else:
        created = await store.create_webhook("http://127.0.0.1:9/h", [], new_secret(), "")
    return created.webhook_id


def fill(case: str, hooks: list[str], special: str | None, waiting: int, pg: bool) -> str:
    """One INSERT of every queue row, in seq order: the base webhooks' due rows spread
    among the case's waiting ones."""
    now = "(now() AT TIME ZONE 'UTC')" if pg else "now()::TIMESTAMP"
    sec = (lambda n: f"make_interval(secs => {n})") if pg else (lambda n: f"to_seconds({n})")
    blob = "'\\x7b7d'::bytea" if pg else "'{}'::BLOB"
    rng = "generate_series(0, {} - 1)" if pg else "range({})"
    text = (lambda x: f"({x})::text") if pg else (lambda x: f"({x})::VARCHAR")
    total = BASE_HOOKS * ROWS_PER_HOOK
    stride = max(1, (waiting or total) // total)
    parts = [
        # base: due a little in the past, in a seq among the case's rows
        f"SELECT (ARRAY[{', '.join(repr(h) for h in hooks)}])[(i % {BASE_HOOKS}) + 1] AS w, "
        f"'b' || {text('i')} AS e, 'pending' AS s, "
        f"{now} - {sec('60 - i * 0.001')} AS t, i * {stride} + 1 AS seq, NULL::TIMESTAMP AS lease "
        f"FROM {rng.format(total)} AS g(i)"
    ]
    if special is not None and case != "base":
        if case == "delivered":
            state, due = "'delivered'", "NULL::TIMESTAMP"
        elif case == "fifo":
            state = "CASE WHEN i = 0 THEN 'inflight' ELSE 'pending' END"
            due = "NULL::TIMESTAMP"
        elif case == "rate":
            state, due = "'pending'", f"{now} + {sec('1 + i')}"
        elif case == "capped":
            state = "CASE WHEN i < 8 THEN 'inflight' ELSE 'pending' END"
            due = f"{now} - {sec('120 - i * 0.0001')}"
        else:  # burst
            state, due = "'pending'", f"{now} - {sec('120 - i * 0.0001')}"
        lease = f"CASE WHEN {state} = 'inflight' THEN {now} + {sec(3600)} END"
        parts.append(
            f"SELECT {special!r} AS w, 'x' || {text('i')} AS e, {state} AS s, "
            f"CASE WHEN {state} = 'inflight' THEN NULL ELSE {due} END AS t, i AS seq, "
            f"{lease} AS lease FROM {rng.format(waiting)} AS g(i)"
        )
    rows = " UNION ALL ".join(parts)
    return (
        "INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, "
        f"retry_base, next_attempt_at, lease_until, body, created_at, updated_at{', seq' * SEQ}) "
        f"SELECT w, e, s, 0, 0, t, lease, {blob}, {now}, {now}{', seq' * SEQ} "
        f"FROM ({rows}) r ORDER BY seq"
    )


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return f"min {ms[0]:7.2f} ms  median {statistics.median(ms):7.2f} ms  p90 {p90:7.2f} ms"


Claim = Callable[[], Awaitable[int]]


async def prepare(store: Store, sql: Sql, case: str, waiting: int) -> None:
    hooks = [await new_hook(store) for _ in range(BASE_HOOKS)]
    special = None
    if case == "fifo":
        special = await new_hook(store, ordering="fifo")
    elif case in ("rate", "burst"):
        special = await new_hook(store, rate_limit=1.0)
    elif case in ("capped", "delivered"):
        special = await new_hook(store)
    pg = isinstance(store, PostgresStore)
    await sql(fill(case, hooks, special, waiting, pg))
    if case == "rate":  # an empty bucket, as a backlog leaves it
        now = "(now() AT TIME ZONE 'UTC')" if pg else "now()::TIMESTAMP"
        await sql(
            f"UPDATE webhooks SET rate_tokens = 0, rate_refilled_at = {now} "
            f"WHERE webhook_id = '{special}'"
        )


async def time_claims(claim: Claim, claims: int, expected: int = LIMIT) -> list[float]:
    for _ in range(3):  # warm up: plans, caches
        await claim()
    times = []
    for _ in range(claims):
        started = time.perf_counter()
        got = await claim()
        times.append(time.perf_counter() - started)
        assert got == expected, f"{expected} rows to give, not {got}"
    return times


async def duckdb_case(case: str, waiting: int, claims: int) -> str:
    import duckdb

    from webhookd.store.duckdb import batches

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "claim.duckdb"
        store = DuckDBStore(path)
        await store.open()
        try:

            def run_sql(con: Any, payloads: list[str]) -> list[None]:
                for text in payloads:
                    con.execute(text)
                return [None] * len(payloads)

            async def sql(text: str) -> None:
                await store._write(run_sql, text)

            await prepare(store, sql, case, waiting)
        finally:
            await store.close()
        con = duckdb.connect(str(path))
        con.execute("SET threads = 1")  # as the store's connection (_open_connection)

        async def claim() -> int:
            con.execute("BEGIN TRANSACTION")
            try:
                (got,) = batches.claim(con, [(LIMIT, PER_WEBHOOK, LEASE, {})])
            finally:
                con.execute("ROLLBACK")
            return len(got)

        try:
            return summary(await time_claims(claim, claims, 1 if case == "burst" else LIMIT))
        finally:
            con.close()


async def postgres_case(url: str, case: str, waiting: int, claims: int) -> str:
    import asyncpg  # type: ignore[import-untyped]

    schema = fresh_schema()
    store = PostgresStore(url, schema=schema, pool_size=4)
    await store.open()
    # Set up as the store's own connections are (search_path, jit off).
    con = await asyncpg.connect(url, server_settings=store._server_settings)
    try:

        async def sql(text: str) -> None:
            await con.execute(text)
            await con.execute("ANALYZE webhook_delivery_queue")

        await prepare(store, sql, case, waiting)

        async def claim() -> int:
            outer = con.transaction()
            await outer.start()
            try:
                got = await store._claim(con, LIMIT, PER_WEBHOOK, LEASE, [], [])
            finally:
                await outer.rollback()
            return len(got)

        return summary(await time_claims(claim, claims, 1 if case == "burst" else LIMIT))
    finally:
        await con.close()
        await store.close()
        await drop_schema(url, schema)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["duckdb", "postgresql", "both"], default="both")
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=40)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    print(
        f"claim({LIMIT}, per_webhook={PER_WEBHOOK}) with {BASE_HOOKS} webhooks x "
        f"{ROWS_PER_HOOK} due rows, and {args.waiting} rows waiting per case"
    )
    if args.engine in ("duckdb", "both"):
        for case in cases:
            print(f"duckdb      {case:9} {await duckdb_case(case, args.waiting, args.claims)}")
    if args.engine in ("postgresql", "both"):
        with pg_cluster() as cluster:
            for case in cases:
                result = await postgres_case(cluster.url, case, args.waiting, args.claims)
                print(f"postgresql  {case:9} {result}")


if __name__ == "__main__":
    asyncio.run(main())
