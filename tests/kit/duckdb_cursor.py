"""The DuckDB main writer's cursor on a real file, for tests of the statements a batch
function runs (store/duckdb/batches.py) and of what the cursor remembers between them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from webhookd.states import Status
from webhookd.store.base import Claim, Outcome
from webhookd.store.duckdb.common import Cursor
from webhookd.store.duckdb.disk import Disk
from webhookd.store.duckdb.migrate import migrate, open_connection
from webhookd.store.duckdb.queries import queries
from webhookd.store.records import utcnow


class Counting(Cursor):
    """The main writer's cursor (it remembers), naming each statement it runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names = {sql: name for name, sql in queries().items()}
        self.ran: list[str] = []

    def execute(self, query: str, parameters: object = None) -> Any:
        self.ran.append(self.names.get(query, query))
        return super().execute(query, parameters)


C = TypeVar("C", bound=Counting)


@contextmanager
def counting_cursor(directory: Path, kind: type[C] = Counting) -> Iterator[C]:  # type: ignore[assignment]
    """A migrated database file in `directory` and the main writer's cursor on it (of
    `kind`, a Counting)."""
    path = directory / "q.duckdb"
    raw = open_connection(path, "256MB")
    migrate(raw)
    cur = kind(raw.cursor(), Disk(path, lambda: None), remembers=True)
    try:
        yield cur
    finally:
        cur.close()
        raw.close()


def in_transaction(con: Cursor, fn: Any, *args: Any) -> Any:
    """fn(con, *args) in a transaction of its own, committed."""
    con.execute("BEGIN TRANSACTION")
    result = fn(con, *args)
    con.execute("COMMIT")
    return result


def delivered(claim: Claim, **changes: Any) -> Outcome:
    """The outcome of a claim's attempt that the receiver took (204), with `changes`."""
    outcome = Outcome(
        webhook_id=claim.webhook_id,
        event_id=claim.event_id,
        attempt=claim.attempt,
        status=Status.DELIVERED,
        next_attempt_at=None,
        attempted_at=utcnow(),
        duration_ms=1.0,
        status_code=204,
        error=None,
        response_excerpt="",
        outcome="delivered",
        claimed_until=claim.claimed_until,
        seq=claim.seq,
    )
    return replace(outcome, **changes)
