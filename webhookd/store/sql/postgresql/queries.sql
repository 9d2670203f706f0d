-- The PostgreSQL engine's data path, one named query per section ("-- name: X").
-- Loaded by webhookd/store/postgres/queries.py; {MATCHES} is common.MATCHES (which
-- webhooks take an event, e alias the event, w the webhook). Times are UTC without a
-- time zone, as the tables keep them; states are those of webhookd/states.py.


-- name: heartbeat
-- Register this daemon, or tell the others it is alive (re-registers it if the leader
-- forgot it while it could not reach the database).
INSERT INTO daemons (daemon_id, hostname, pid, started_at, heartbeat_at)
VALUES ($1, $2, $3, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC')
ON CONFLICT (daemon_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at;


-- name: unregister
DELETE FROM daemons WHERE daemon_id = $1;


-- name: ingest
-- The events of one request; ids already stored are left alone and checked by
-- ingest_conflicts in the same transaction (a later statement: its snapshot sees the
-- rows a concurrent ingest of the same ids committed while this one waited on them).
INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at, ingested_at)
SELECT u.event_id, u.event_type, u.payload::jsonb, u.body, u.occurred_at,
       now() AT TIME ZONE 'UTC'
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::timestamp[])
    AS u(event_id, event_type, payload, body, occurred_at)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;


-- name: ingest_conflicts
-- Of the ids given, those stored with another type or other data (jsonb equality).
SELECT u.event_id
FROM unnest($1::text[], $2::text[], $3::text[]) AS u(event_id, event_type, payload)
JOIN pipeline_events e ON e.event_id = u.event_id
WHERE e.event_type <> u.event_type OR e.payload <> u.payload::jsonb;


-- name: scan_lock
-- One scanner advances the cursor at a time; the others return at once.
SELECT pg_try_advisory_xact_lock($1);


-- name: scan_read
-- The cursor and the events after it, in (xid, seq) order, only those of transactions
-- older than every transaction still running: a producer's transaction that is still
-- open holds the scan back instead of being skipped when it commits. One statement, so
-- one snapshot, taken before this transaction writes (it has no xid of its own yet).
-- The payload and time come back only for events without a body (written in SQL).
SELECT c.seq AS cursor_seq, e.event_id, e.event_type, e.xid, e.seq,
       CASE WHEN e.body IS NULL THEN e.payload::text END AS payload,
       CASE WHEN e.body IS NULL THEN e.occurred_at END AS occurred_at
FROM scanner_cursor c
LEFT JOIN LATERAL (
    SELECT p.event_id, p.event_type, p.xid, p.seq, p.body, p.payload, p.occurred_at
    FROM pipeline_events p
    WHERE (p.xid, p.seq) > (c.xid, c.seq)
      AND p.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY p.xid, p.seq
    LIMIT $1
) e ON true
WHERE c.name = 'main';


-- name: scan_enqueue
-- Store the bodies built for events written in SQL, enqueue every event read for every
-- matching active webhook (ON CONFLICT: replay may have inserted some first), move the
-- cursor to the last event read, and wake the daemons' workers if anything was enqueued.
-- $1 event ids read, $2/$3 the last (xid, seq), $4/$5 ids and bodies built here.
WITH built AS (
    SELECT * FROM unnest($4::text[], $5::bytea[]) AS b(event_id, body)
), filled AS (
    UPDATE pipeline_events p SET body = b.body
    FROM built b
    WHERE p.event_id = b.event_id AND p.body IS NULL
), e AS (
    SELECT p.event_id, p.event_type, coalesce(p.body, b.body) AS body
    FROM pipeline_events p
    LEFT JOIN built b ON b.event_id = p.event_id
    WHERE p.event_id = ANY ($1::text[])
), enqueued AS (
    INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                        next_attempt_at, body, created_at, updated_at)
    SELECT w.webhook_id, e.event_id, 'pending', 0, 0, now() AT TIME ZONE 'UTC', e.body,
           now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC'
    FROM e JOIN webhooks w ON {MATCHES}
    ON CONFLICT DO NOTHING
    RETURNING 1
), moved AS (
    UPDATE scanner_cursor SET xid = $2::xid8, seq = $3, updated_at = now() AT TIME ZONE 'UTC'
    WHERE name = 'main'
), counted AS (
    SELECT count(*) AS n FROM enqueued
)
SELECT n, (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                                 WHERE n > 0) notified) AS notified
FROM counted;


-- name: claim_lock
-- Claims are serialised across daemons: a webhook's cap is a read (its inflight rows,
-- whoever holds them) then a write (more rows inflight) over many rows, which two
-- concurrent claims could each pass; under this lock the pair is atomic. Claims are
-- batched, so this is one short critical section per batch, not per row.
SELECT pg_advisory_xact_lock($1);


-- name: claim
-- Up to $1 due rows, oldest first, none beyond its webhook's room: the cap ($2, or the
-- smaller cap the daemon asks for in $3/$4; 1 for a webhook whose last attempt got no
-- answer) less the rows every daemon holds inflight for it. Webhooks with no room are
-- excluded before the LIMIT, so their rows cannot fill the candidates; candidates are
-- ranked per webhook to keep within the room left. Rows of webhooks inactive or gone
-- come back as "strays" (the caller parks them). $5 candidates to read, $6 the lease in
-- seconds, $7 this daemon's id. The statement's own time, not the transaction's: the
-- claim may have waited on claim_lock.
WITH held AS (
    SELECT q.webhook_id, count(*) AS n
    FROM webhook_delivery_queue q
    WHERE q.status = 'inflight'
    GROUP BY q.webhook_id
), room AS (
    SELECT w.webhook_id,
           CASE WHEN w.silent THEN 1 ELSE least(coalesce(c.cap, $2::int), $2::int) END
               - coalesce(h.n, 0) AS room
    FROM webhooks w
    LEFT JOIN held h ON h.webhook_id = w.webhook_id
    LEFT JOIN unnest($3::text[], $4::int[]) AS c(webhook_id, cap) ON c.webhook_id = w.webhook_id
    WHERE w.active
), candidates AS (
    SELECT q.webhook_id, q.event_id, q.next_attempt_at
    FROM webhook_delivery_queue q
    WHERE q.status = 'pending'
      AND q.next_attempt_at <= statement_timestamp() AT TIME ZONE 'UTC'
      AND q.webhook_id <> ALL (ARRAY(SELECT r.webhook_id FROM room r WHERE r.room <= 0))
    ORDER BY q.next_attempt_at
    LIMIT $5
    FOR UPDATE OF q SKIP LOCKED
), ranked AS (
    SELECT c.webhook_id, c.event_id, c.next_attempt_at, r.room,
           row_number() OVER (PARTITION BY c.webhook_id
                              ORDER BY c.next_attempt_at, c.event_id) AS rank
    FROM candidates c
    LEFT JOIN room r ON r.webhook_id = c.webhook_id
), picked AS (
    SELECT webhook_id, event_id
    FROM ranked
    WHERE rank <= room
    ORDER BY next_attempt_at, webhook_id, event_id
    LIMIT $1
), claimed AS (
    UPDATE webhook_delivery_queue q
    SET status = 'inflight',
        lease_until = statement_timestamp() AT TIME ZONE 'UTC' + make_interval(secs => $6),
        claimed_by = $7,
        updated_at = statement_timestamp() AT TIME ZONE 'UTC'
    FROM picked p
    WHERE q.webhook_id = p.webhook_id AND q.event_id = p.event_id
    RETURNING q.webhook_id, q.event_id, q.attempts, q.retry_base, q.body, q.lease_until,
              q.next_attempt_at
)
SELECT false AS stray, c.webhook_id, c.event_id, c.attempts, c.retry_base, c.body,
       c.lease_until, c.next_attempt_at, w.url, w.secret, w.previous_secret,
       w.previous_secret_expires_at, statement_timestamp() AT TIME ZONE 'UTC' AS now
FROM claimed c
JOIN webhooks w ON w.webhook_id = c.webhook_id
UNION ALL
SELECT DISTINCT true, r.webhook_id, NULL::text, NULL::int, NULL::int, NULL::bytea,
       NULL::timestamp, NULL::timestamp, NULL::text, NULL::text, NULL::text,
       NULL::timestamp, statement_timestamp() AT TIME ZONE 'UTC'
FROM ranked r
WHERE r.room IS NULL;


-- name: record
-- A batch of outcomes in one statement. Each applies to its row only while the row still
-- holds the claim's lease (a late outcome of a claim that was rescued and claimed again
-- changes nothing). Spent outcomes count an attempt and are logged; the others (the
-- daemon's own resources failed) send the row back to pending with its error only. A
-- 410 deactivates the webhook and parks its pending rows; a retry of a webhook inactive
-- (or deactivated here) is parked. webhooks.silent follows the webhook's latest spent
-- outcome in the batch: no answer at all means one attempt at a time on every daemon.
-- Every CTE sees the same snapshot, so webhooks are updated by one CTE only.
WITH o AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamp[],
                $6::timestamp[], $7::float8[], $8::int[], $9::text[], $10::text[],
                $11::text[], $12::bool[], $13::timestamp[], $14::bool[])
        WITH ORDINALITY
        AS o(webhook_id, event_id, status, attempt, next_attempt_at, attempted_at,
             duration_ms, status_code, error, response_excerpt, outcome, deactivate,
             claimed_until, spent, ord)
), hooks AS (
    SELECT o.webhook_id,
           bool_or(o.deactivate) AS gone,
           (array_agg(o.status_code IS NULL ORDER BY o.ord DESC)
                FILTER (WHERE o.spent))[1] AS silent,
           coalesce(bool_or(w.active), false) AND NOT bool_or(o.deactivate) AS active
    FROM o
    LEFT JOIN webhooks w ON w.webhook_id = o.webhook_id
    GROUP BY o.webhook_id
), hooks_changed AS (
    UPDATE webhooks w
    SET active = w.active AND NOT h.gone,
        disabled_reason = CASE WHEN h.gone AND w.active
                               THEN 'the endpoint answered 410 Gone'
                               ELSE w.disabled_reason END,
        updated_at = CASE WHEN h.gone AND w.active
                          THEN now() AT TIME ZONE 'UTC' ELSE w.updated_at END,
        silent = coalesce(h.silent, w.silent)
    FROM hooks h
    WHERE w.webhook_id = h.webhook_id
      AND ((h.gone AND w.active) OR w.silent <> coalesce(h.silent, w.silent))
), rows_changed AS (
    UPDATE webhook_delivery_queue q
    SET status = CASE WHEN o.status = 'pending' AND NOT h.active THEN 'parked'
                      ELSE o.status END,
        attempts = CASE WHEN o.spent THEN o.attempt ELSE q.attempts END,
        next_attempt_at = o.next_attempt_at,
        lease_until = NULL,
        claimed_by = NULL,
        last_status_code = o.status_code,
        last_error = o.error,
        last_attempt_at = CASE WHEN o.spent THEN o.attempted_at ELSE q.last_attempt_at END,
        updated_at = now() AT TIME ZONE 'UTC'
    FROM o JOIN hooks h ON h.webhook_id = o.webhook_id
    WHERE q.webhook_id = o.webhook_id AND q.event_id = o.event_id
      AND q.status = 'inflight'
      AND (o.claimed_until IS NULL OR q.lease_until = o.claimed_until)
    RETURNING 1
), logged AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at, duration_ms,
                                    status_code, error, response_excerpt, outcome)
    SELECT webhook_id, event_id, attempt, attempted_at, duration_ms, status_code, error,
           response_excerpt, outcome
    FROM o
    WHERE spent
    ORDER BY ord
), gone_parked AS (
    -- pending rows only: never a row of rows_changed (inflight), so no row is changed twice
    UPDATE webhook_delivery_queue q
    SET status = 'parked', lease_until = NULL, claimed_by = NULL,
        updated_at = now() AT TIME ZONE 'UTC'
    FROM hooks h
    WHERE h.gone AND q.webhook_id = h.webhook_id AND q.status = 'pending'
)
SELECT count(*) FROM rows_changed;


-- name: release
-- Rows this daemon claimed and hands back (shutdown, a silent webhook's extra rows): due
-- now, or parked when their webhook is inactive or gone; wakes the workers.
WITH released AS (
    UPDATE webhook_delivery_queue q
    SET status = CASE WHEN EXISTS (SELECT 1 FROM webhooks w
                                   WHERE w.webhook_id = q.webhook_id AND w.active)
                      THEN 'pending' ELSE 'parked' END,
        next_attempt_at = now() AT TIME ZONE 'UTC',
        lease_until = NULL,
        claimed_by = NULL,
        updated_at = now() AT TIME ZONE 'UTC'
    FROM unnest($1::text[], $2::text[]) AS k(webhook_id, event_id)
    WHERE q.webhook_id = k.webhook_id AND q.event_id = k.event_id
      AND q.status = 'inflight' AND q.claimed_by = $3
    RETURNING q.status
), counted AS (
    SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS due FROM released
)
SELECT n, (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                                 WHERE due > 0) notified) AS notified
FROM counted;


-- name: rescue_expired
-- Inflight rows whose lease ran out before $1, or whose daemon is not registered or has
-- not beaten its heart for $2 seconds (by the database's clock): due now, or parked when
-- their webhook is inactive or gone. Daemons silent for $3 seconds are forgotten (their
-- rows are rescued here all the same: an unregistered claimant is a dead one).
WITH rescued AS (
    UPDATE webhook_delivery_queue q
    SET status = CASE WHEN EXISTS (SELECT 1 FROM webhooks w
                                   WHERE w.webhook_id = q.webhook_id AND w.active)
                      THEN 'pending' ELSE 'parked' END,
        next_attempt_at = now() AT TIME ZONE 'UTC',
        lease_until = NULL,
        claimed_by = NULL,
        updated_at = now() AT TIME ZONE 'UTC'
    WHERE q.status = 'inflight'
      AND (q.lease_until < $1::timestamp
           OR NOT EXISTS (SELECT 1 FROM daemons d
                          WHERE d.daemon_id = q.claimed_by
                            AND d.heartbeat_at >= now() AT TIME ZONE 'UTC'
                                                  - make_interval(secs => $2)))
    RETURNING q.status
), forgotten AS (
    DELETE FROM daemons
    WHERE heartbeat_at < now() AT TIME ZONE 'UTC' - make_interval(secs => $3)
), counted AS (
    SELECT count(*) AS n, count(*) FILTER (WHERE status = 'pending') AS due FROM rescued
)
SELECT n, (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                                 WHERE due > 0) notified) AS notified
FROM counted;
