-- The scanner no longer waits for the oldest transaction of the cluster (issue 22): it
-- reads, batch by batch, the events of the transactions that finished between two of its
-- snapshots (queries.sql, scan_read), so that a transaction left open anywhere holds back
-- only its own events, which are read when it commits.
--   snap    every transaction it shows as finished (below its xmax, not in its xip) has had
--           its events scanned; those it shows running, and any later one, have not
--   target  the snapshot the batch in progress reads up to; NULL between batches
--   xid, seq  the last event scanned (within a batch in progress: where it goes on from)
ALTER TABLE scanner_cursor ADD COLUMN snap pg_snapshot, ADD COLUMN target pg_snapshot;
-- Until now the cursor only passed events of transactions older than every one running, in
-- (xid, seq) order: every transaction below the cursor's xid has finished and been scanned,
-- and the cursor's own transaction is scanned up to its seq. So: a batch from the cursor's
-- xid on, up to a snapshot taken now, going on after the cursor. (A cursor that never
-- moved: everything from the first normal transaction id, 3, on.)
UPDATE scanner_cursor
SET snap = (greatest(xid::text::bigint, 3) || ':' || greatest(xid::text::bigint, 3) || ':')::pg_snapshot,
    target = CASE WHEN xid <> '0'::xid8 THEN pg_current_snapshot() END;
ALTER TABLE scanner_cursor ALTER COLUMN snap SET NOT NULL;
