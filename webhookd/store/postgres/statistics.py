"""Fresh planner statistics for the queue's tables, kept by the daemon that leads upkeep.

asyncpg prepares every statement, and PostgreSQL keeps one generic plan for a prepared
statement once that plan looks no dearer than planning each call anew. A plan made while
a table was nearly empty (a new schema, a queue that was quiet) stays until the table's
statistics change, and autovacuum analyzes a table at most once per `autovacuum_naptime`
(a minute by default) and only after a tenth of its rows changed. Measured with the
throughput bench (20,000 events for one webhook on a fresh schema): claims took 30 ms to
2 s each, walking every pending row of the webhook for each row they took, and scans read
all of pipeline_events, until autovacuum's ANALYZE came, if it came within the run; the
same bench gave 460 or 1,640 deliveries/s depending on that.

So the leader looks every second and analyzes a table once its rows changed, since its
last ANALYZE (whoever ran it), as many times as the table held rows then, and at least
MIN_CHANGES times: a queue that grows from nothing is analyzed a handful of times on the
way (each doubling), a steady one rarely. ANALYZE invalidates the cached plans, which are
made again with the new figures. It never waits behind autovacuum (lock_timeout): that
one is at it already.
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]

from webhookd.store.postgres.migrate import quote_ident
from webhookd.store.postgres.queries import query

TABLES = ("webhook_delivery_queue", "pipeline_events", "webhook_deliveries")
MIN_CHANGES = 500


async def refresh(con: Any) -> list[str]:
    """ANALYZE the tables of the schema whose statistics are stale; the ones done."""
    stale = [r["relname"] for r in await con.fetch(query("stale_statistics"), TABLES, MIN_CHANGES)]
    done = []
    for table in stale:
        try:
            async with con.transaction():
                await con.execute("SET LOCAL lock_timeout = '100ms'")
                await con.execute(f"ANALYZE {quote_ident(table)}")
        except asyncpg.LockNotAvailableError:
            continue
        done.append(table)
    return done
