"""The DuckDB engine's named queries (sql/duckdb/queries.sql, see store/queries.py)."""

from __future__ import annotations

import functools

from webhookd.store import queries as named
from webhookd.store.records import ATTEMPT_COLUMNS, DELIVERY_COLUMNS, WEBHOOK_COLUMNS

# An active webhook takes an event of its own tenant (none: of none) when it lists its type,
# or lists no type at all (webhookd's own operational events, webhookd.*, only when listed).
# The tenant as coalesce(tenant, '') on both sides: an equality DuckDB joins by hash, so the
# scan does not pair every event with every webhook.
MATCHES = (
    "w.active AND coalesce(w.tenant, '') = coalesce(e.tenant, '') "
    "AND ((len(w.event_types) = 0 AND NOT starts_with(e.event_type, 'webhookd.')) "
    "OR list_contains(w.event_types, e.event_type))"
)


@functools.cache
def queries() -> dict[str, str]:
    # Without comments: a statement's text is searched for writes to the webhooks table
    # on every execution (common.Cursor), and a comment must not look like one.
    return named.load(
        "duckdb",
        {
            "MATCHES": MATCHES,
            "WEBHOOK_COLUMNS": WEBHOOK_COLUMNS,
            "DELIVERY_COLUMNS": DELIVERY_COLUMNS,
            "ATTEMPT_COLUMNS": ATTEMPT_COLUMNS,
        },
        comments=False,
    )


def query(name: str) -> str:
    return queries()[name]
