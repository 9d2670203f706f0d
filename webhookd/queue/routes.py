"""Which active webhooks take an event, decided in Python for the few events of a small
DuckDB scan (store/duckdb/batches.py, enqueue_claimed): the scan's SQL join costs DuckDB
about 2.2 ms however few the events, this look-up microseconds.

The rule is the scan's (MATCHES in store/duckdb/queries.py): an active webhook takes an
event of its own tenant (none: of none; NULL and '' are the same) when it lists the event's
type, or lists no type and the event is not one of webhookd's own (webhookd.*).
tests/test_routes.py holds the two to the same answers, case by case.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from webhookd.queue.operational import is_operational


class Routes:
    """The active webhooks, indexed by tenant and by the types they list."""

    def __init__(self, webhooks: Iterable[tuple[str, str | None, Sequence[str]]]) -> None:
        # tenant ('' for none) -> (webhooks that list no type, type -> webhooks that list it)
        self._by_tenant: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
        ids: set[str] = set()
        for webhook_id, tenant, event_types in webhooks:
            ids.add(webhook_id)
            every, by_type = self._by_tenant.setdefault(tenant or "", ([], {}))
            if not event_types:
                every.append(webhook_id)
            for event_type in set(event_types):
                by_type.setdefault(event_type, []).append(webhook_id)
        self.webhooks = frozenset(ids)

    def takers(self, event_type: str, tenant: str | None) -> list[str]:
        """The webhooks that take an event of this type and tenant, each once, sorted."""
        found = self._by_tenant.get(tenant or "")
        if found is None:
            return []
        every, by_type = found
        listed = by_type.get(event_type, [])
        if is_operational(event_type) or not every:
            return sorted(listed)
        return sorted({*every, *listed})
