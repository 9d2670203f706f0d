"""The PostgreSQL engine's named queries (sql/postgresql/queries.sql, see store/queries.py)."""

from __future__ import annotations

import functools

from webhookd.store import queries as named
from webhookd.store.postgres.common import MATCHES


@functools.cache
def queries() -> dict[str, str]:
    return named.load("postgresql", {"MATCHES": MATCHES})


def query(name: str) -> str:
    return queries()[name]
