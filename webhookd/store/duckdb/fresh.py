"""The events the ingest writer just committed, handed to the main writer's next scan so
that a scan of a few events need not read them back (batches.enqueue_claimed): reading
them costs DuckDB 0.8 ms of the 3.3 ms that scan's transaction takes.

Only a run of events that covers every seq after the scan's cursor, with no gap, stands
for what a read would find: sequences are unique, so no other event (another writer's, or
webhookd's own operational events, which the main writer stores) can hold a seq inside
it. Anything else, a gap (a rolled-back ingest burns its seq, an operational event takes
one) or an event not handed over, is read from the table as before. Events committed
later than the run come with their own kick.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

# (seq, event_id, event_type, tenant, body, traceparent): the columns scan_few reads.
Row = tuple[int, str, str, str | None, bytes, str | None]

# The most events a scan takes without its join (batches.enqueue_claimed), and so the most
# kept here: when more follow the cursor, the scan reads them anyway.
FEW_EVENTS = 16
# A larger body is not kept (the scan reads its event): at most 16 small ones in memory.
KEPT_BODY = 65_536


class FreshEvents:
    """Committed events, in seq order, between the ingest writer's thread (add) and the
    main writer's (after)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[Row] = []

    def add(self, rows: Iterable[Row]) -> None:
        """Events whose transaction has committed, in the order they committed."""
        with self._lock:
            self._rows.extend(r for r in rows if len(r[4]) <= KEPT_BODY)
            del self._rows[:-FEW_EVENTS]

    def after(self, cursor: int, most: int) -> list[Row] | None:
        """Every event after `cursor`, if the run held covers them all from cursor + 1
        without a gap and they are at most `most`; else None (read them)."""
        with self._lock:
            rows = self._rows = [r for r in self._rows if r[0] > cursor]
            if not rows or len(rows) > most:
                return None
            if any(row[0] != cursor + 1 + i for i, row in enumerate(rows)):
                return None
            return list(rows)

    def clear(self) -> None:
        with self._lock:
            self._rows = []
