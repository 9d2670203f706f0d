"""The PostgreSQL engine's named queries (sql/postgresql/queries.sql, see store/queries.py)."""

from __future__ import annotations

import functools

from webhookd.store import queries as named
from webhookd.store.records import ATTEMPT_COLUMNS, DELIVERY_COLUMNS, WEBHOOK_COLUMNS

# An active webhook takes an event of its own tenant (none: of none) when it lists its type,
# or lists no type at all (webhookd's own operational events, webhookd.*, only when listed).
# The tenant as coalesce(tenant, '') on both sides: one equality,
# served by the index webhooks_tenant_active (a look-up per event, not a pass over every
# tenant's webhooks).
MATCHES = (
    "w.active AND coalesce(w.tenant, '') = coalesce(e.tenant, '') "
    "AND ((cardinality(w.event_types) = 0 AND NOT starts_with(e.event_type, 'webhookd.')) "
    "OR e.event_type = ANY (w.event_types))"
)


@functools.cache
def queries() -> dict[str, str]:
    return named.load(
        "postgresql",
        {
            "MATCHES": MATCHES,
            "WEBHOOK_COLUMNS": WEBHOOK_COLUMNS,
            "DELIVERY_COLUMNS": DELIVERY_COLUMNS,
            "ATTEMPT_COLUMNS": ATTEMPT_COLUMNS,
        },
    )


def query(name: str) -> str:
    return queries()[name]
