-- The PostgreSQL engine's data path, one named query per section ("-- name: X").
-- Loaded by webhookd/store/queries.py; {MATCHES} is postgres/common.MATCHES (which
-- webhooks take an event, e alias the event, w the webhook); {PENDING}, {FIFO} and the
-- like are the names of webhookd/states.py and store/base.Ordering, substituted at load
-- time. Times are UTC without a time zone, as the tables keep them. The DuckDB engine's
-- queries (sql/duckdb/queries.sql) use the same name for the same operation.


-- name: heartbeat
-- Register this daemon with its shared settings ($4, peers.py), or tell the others it is
-- alive (re-registers it if the leader forgot it while it could not reach the database).
-- Answers the database's clock, which the daemon's times are translated to (store.py,
-- PostgresStore.skew), and the settings of the daemons whose heartbeat is fresh ($5
-- seconds), to compare with its own.
WITH beat AS (
    INSERT INTO daemons (daemon_id, hostname, pid, started_at, heartbeat_at, settings)
    VALUES ($1, $2, $3, now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', $4::text::jsonb)
    ON CONFLICT (daemon_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at,
                                          settings = EXCLUDED.settings
    RETURNING heartbeat_at
)
SELECT (SELECT heartbeat_at FROM beat) AS now,
       (SELECT coalesce(jsonb_object_agg(d.daemon_id, d.settings), '{}')::text
        FROM daemons d
        WHERE d.daemon_id <> $1
          AND d.heartbeat_at >= now() AT TIME ZONE 'UTC' - make_interval(secs => $5)) AS peers;


-- name: unregister
DELETE FROM daemons WHERE daemon_id = $1;


-- name: ingest
-- The events of one request; ids already stored are left alone and checked with
-- ingest_known in the same transaction (a later statement: its snapshot sees the
-- rows a concurrent ingest of the same ids committed while this one waited on them).
INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at, ingested_at,
                             tenant, traceparent)
SELECT u.event_id, u.event_type, u.payload::jsonb, u.body, u.occurred_at,
       now() AT TIME ZONE 'UTC', u.tenant, u.traceparent
FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::timestamp[], $6::text[],
            $7::text[])
    AS u(event_id, event_type, payload, body, occurred_at, tenant, traceparent)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;


-- name: ingest_one
-- ingest for a request of one event, in a statement of its own (no BEGIN, no COMMIT: one
-- round trip, against three, on every idle ingest). One event has nothing to roll back: if
-- its id is stored with other content, nothing was written. The lock wait ($8, or the
-- session's) is set by the statement itself: `setting` is read before any row is
-- inserted, so before any wait on another transaction's row lock, and set_config's local
-- value ends with the statement's transaction.
WITH setting AS MATERIALIZED (
    SELECT set_config('lock_timeout', coalesce($8, current_setting('lock_timeout')), true)
)
INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at, ingested_at,
                             tenant, traceparent)
SELECT $1::text, $2::text, $3::text::jsonb, $4::bytea, $5::timestamp,
       now() AT TIME ZONE 'UTC', $6::text, $7::text
FROM setting
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id;


-- name: ingest_known
-- The stored type, tenant and body of the ids given, for queue/conflicts.same_content (an
-- event a producer wrote in SQL may have no body yet: then its data as text).
SELECT event_id, event_type, tenant, body, CASE WHEN body IS NULL THEN payload::text END AS data
FROM pipeline_events
WHERE event_id = ANY ($1::text[]);


-- name: scan_lock
-- One scanner advances the cursor at a time; the others return at once. A scan builds the
-- bodies of events written in SQL between its statements (up to a batch of events of
-- admin.max_body_bytes each): its transaction may stay idle longer than the daemon's
-- others (idle_in_transaction_session_timeout, store.py), up to a minute.
SELECT pg_try_advisory_xact_lock($1)
       AND set_config('idle_in_transaction_session_timeout', '60s', true) IS NOT NULL;


-- name: scan_read
-- The next events to scan, in (xid, seq) order: those of the transactions that finished
-- between the cursor's snapshot (snap) and the batch's (target; taken now when no batch is
-- in progress), after the last event scanned in this batch. A transaction still running
-- at `target` is read in a later batch, when it has finished, however many events of
-- younger transactions were scanned meanwhile; one left open for hours costs nothing but
-- its place in the snapshots' xip lists. Each part is read through the (xid, seq) index:
-- the transactions running at `snap` that finished since (a handful), and the range of
-- transactions that began since `snap`. One statement, so one snapshot, taken before this
-- transaction writes (it has no xid of its own yet).
-- The payload and time come back only for events without a body (written in SQL), and
-- only when the body can be built: a time out of Python's range or data over $2 bytes
-- comes back as `problem` instead (the scan sets the event aside), so that one such row
-- never fails the scan, nor is loaded whole into the daemon.
WITH cursor AS (
    SELECT s.seq AS cursor_seq, s.snap, coalesce(s.target, pg_current_snapshot()) AS target,
           s.target IS NULL AS fresh,
           CASE WHEN s.target IS NULL THEN '0'::xid8 ELSE s.xid END AS pos_xid,
           CASE WHEN s.target IS NULL THEN 0 ELSE s.seq END AS pos_seq
    FROM scanner_cursor s
    WHERE s.name = 'main'
), c AS (
    -- Where the range of younger transactions starts reading, as one row comparison (the
    -- index scan's start): after the last event scanned if it is in that range, else at
    -- the first transaction begun since `snap` (seq starts at 1).
    SELECT cursor.*,
           CASE WHEN pos_xid >= pg_snapshot_xmax(snap) THEN pos_xid
                ELSE pg_snapshot_xmax(snap) END AS range_xid,
           CASE WHEN pos_xid >= pg_snapshot_xmax(snap) THEN pos_seq + 1 ELSE 0 END AS range_seq
    FROM cursor
), finished AS (
    SELECT coalesce(array_agg(x.xid), '{}') AS xids
    FROM c CROSS JOIN LATERAL pg_snapshot_xip(c.snap) AS x(xid)
    WHERE pg_visible_in_snapshot(x.xid, c.target)
)
SELECT c.cursor_seq, c.target::text AS target, c.fresh, e.event_id, e.event_type, e.xid,
       e.seq,
       CASE WHEN e.problem IS NULL THEN e.payload END AS payload,
       CASE WHEN e.problem IS NULL THEN e.occurred_at END AS occurred_at,
       e.problem
FROM c
CROSS JOIN finished f
LEFT JOIN LATERAL (
    SELECT p.event_id, p.event_type, p.xid, p.seq, t.payload,
           CASE WHEN p.no_body THEN p.occurred_at END AS occurred_at,
           CASE WHEN NOT p.no_body THEN NULL
                WHEN starts_with(p.event_type, 'webhookd.')
                    THEN format('type %s: webhookd.* types are webhookd''s own operational '
                                'events; producers may not publish them', p.event_type)
                WHEN NOT (p.occurred_at >= '0001-01-01' AND p.occurred_at < '10000-01-01')
                    THEN format('occurred_at %s is out of range (years 1 to 9999)',
                                p.occurred_at)
                WHEN octet_length(t.payload) > $2
                    THEN format('data of %s bytes is over admin.max_body_bytes (%s)',
                                octet_length(t.payload), $2)
           END AS problem
    FROM (
        (SELECT q.event_id, q.event_type, q.xid, q.seq, q.body IS NULL AS no_body, q.payload,
                q.occurred_at
         FROM pipeline_events q
         WHERE q.xid = ANY (f.xids) AND (q.xid, q.seq) > (c.pos_xid, c.pos_seq)
         ORDER BY q.xid, q.seq
         LIMIT $1)
        UNION ALL
        (SELECT q.event_id, q.event_type, q.xid, q.seq, q.body IS NULL, q.payload,
                q.occurred_at
         FROM pipeline_events q
         WHERE (q.xid, q.seq) >= (c.range_xid, c.range_seq)
           AND q.xid < pg_snapshot_xmax(c.target)
           AND pg_visible_in_snapshot(q.xid, c.target)
         ORDER BY q.xid, q.seq
         LIMIT $1)
    ) p
    CROSS JOIN LATERAL (SELECT CASE WHEN p.no_body THEN p.payload::text END AS payload) t
    ORDER BY p.xid, p.seq
    LIMIT $1
) e ON true;


-- name: scan_finish
-- A batch read to its end without an event left: the cursor's snapshot moves to its target.
UPDATE scanner_cursor SET snap = target, target = NULL, updated_at = now() AT TIME ZONE 'UTC'
WHERE name = 'main' AND target IS NOT NULL;


-- name: scan_enqueue
-- Store the bodies built for events written in SQL, enqueue every event read for every
-- matching active webhook (ON CONFLICT: replay may have inserted some first), move the
-- cursor to the last event read, and wake the daemons' workers if anything was enqueued.
-- A fifo webhook's rows wait behind its head (no next_attempt_at); the fifo webhooks that
-- got rows come back in `fifo`, for fifo.settle in the same transaction. The webhooks that
-- got rows come back in `claimable` (those not rate-limited) and `rated` (whether any is):
-- a scan that claims (scans.py) claims from the first only.
-- $1 event ids read, $2/$3 the last (xid, seq), $4/$5 ids and bodies built here, $6/$7
-- ids and reasons of the events set aside (not enqueued), $8 the batch's target snapshot,
-- $9 whether the batch is read to its end (the cursor's snapshot then moves to the target),
-- $10 whether to wake the workers here (a scan that claims wakes them after its claim,
-- only if it left rows due: scan_notify).
WITH rejected AS (
    INSERT INTO rejected_events (event_id, error, rejected_at)
    SELECT r.event_id, r.error, now() AT TIME ZONE 'UTC'
    FROM unnest($6::text[], $7::text[]) AS r(event_id, error)
    ON CONFLICT (event_id) DO NOTHING
), built AS (
    SELECT * FROM unnest($4::text[], $5::bytea[]) AS b(event_id, body)
), filled AS (
    UPDATE pipeline_events p SET body = b.body
    FROM built b
    WHERE p.event_id = b.event_id AND p.body IS NULL
), e AS (
    SELECT p.event_id, p.event_type, p.tenant, p.seq, coalesce(p.body, b.body) AS body,
           p.traceparent
    FROM pipeline_events p
    LEFT JOIN built b ON b.event_id = p.event_id
    WHERE p.event_id = ANY ($1::text[])
), enqueued AS (
    INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                        next_attempt_at, body, created_at, updated_at, seq,
                                        traceparent)
    SELECT w.webhook_id, e.event_id, {PENDING}, 0, 0,
           CASE WHEN w.ordering = {FIFO} THEN NULL ELSE now() AT TIME ZONE 'UTC' END, e.body,
           now() AT TIME ZONE 'UTC', now() AT TIME ZONE 'UTC', e.seq, e.traceparent
    FROM e JOIN webhooks w ON {MATCHES}
    ON CONFLICT DO NOTHING
    RETURNING webhook_id, next_attempt_at IS NULL AS waiting
), moved AS (
    UPDATE scanner_cursor
    SET xid = $2::xid8, seq = $3,
        snap = CASE WHEN $9::bool THEN $8::text::pg_snapshot ELSE snap END,
        target = CASE WHEN $9::bool THEN NULL ELSE $8::text::pg_snapshot END,
        updated_at = now() AT TIME ZONE 'UTC'
    WHERE name = 'main'
), counted AS (
    SELECT count(*) AS n,
           array_agg(DISTINCT q.webhook_id) FILTER (WHERE q.waiting) AS fifo,
           array_agg(DISTINCT q.webhook_id) FILTER (WHERE w.rate_limit IS NULL) AS claimable,
           coalesce(bool_or(w.rate_limit IS NOT NULL), false) AS rated
    FROM enqueued q
    LEFT JOIN webhooks w ON w.webhook_id = q.webhook_id
)
SELECT n, fifo,
       (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                              WHERE n > 0 AND $10::bool) notified) AS notified,
       claimable, rated
FROM counted;


-- name: scan_notify
-- A scan that claimed left rows it enqueued due (scan_enqueue's $10): wake the workers.
SELECT pg_notify(current_schema() || '.deliveries', '');


-- name: CAP
-- A webhook's cap as a claim applies it, the rule of queue/pacing.cap written in SQL
-- (tests/test_queue_rules.py runs both on one table): one for a webhook that is fifo or
-- whose last attempt got no answer (silent); else its own (max_in_flight) or the
-- daemon's per_webhook, unless the daemon asks for a cap of its own (asked): that one
-- when the daemon is alone in holding the webhook's rows and the webhook is not
-- rate-limited (claims ahead of a fast receiver), else within the webhook's own.
CASE WHEN silent OR fifo THEN 1
     WHEN asked IS NULL THEN coalesce(own_cap, per_webhook)
     WHEN alone AND rate IS NULL THEN asked
     ELSE least(asked, coalesce(own_cap, per_webhook)) END;


-- name: TOKENS
-- What the token bucket of webhook w holds at clock.now, the rule of
-- queue/pacing.tokens_now written in SQL (tests/test_queue_rules.py runs both on one
-- table): refilled at rate_limit a second since rate_refilled_at, at most one second's
-- worth and at least one token; a bucket never written is full; NULL if not rate-limited.
CASE WHEN w.rate_limit IS NOT NULL THEN
    least(greatest(1.0::float8, w.rate_limit),
          coalesce(w.rate_tokens, greatest(1.0::float8, w.rate_limit))
          + greatest(0.0::float8, extract(epoch FROM clock.now
                      - coalesce(w.rate_refilled_at, clock.now))::float8)
            * w.rate_limit)
END;


-- name: claim_hooks
-- Claims of different webhooks run at once, claims of one webhook one at a time (there is
-- no lock over all claims: each would have been one critical section for the whole
-- fleet). The webhooks this claim may draw from: active, with room by the CAP rule
-- (counted from the rows every daemon holds inflight, read here before any lock: the
-- claim statement counts again) and with a due row, at most $5 of them, the oldest due
-- first; each is locked for the transaction by a transaction advisory lock of its own,
-- tried in webhook order (one that another daemon's claim holds is skipped, and none is
-- waited for, so no two claims deadlock). The claim statement that follows takes a
-- snapshot after the locks: it sees every claim of these webhooks that committed before.
-- $1 this daemon, $2 per_webhook, $3/$4 the caps it asks for, $6 the webhooks to draw from
-- (NULL: all; a scan's claim names those it enqueued rows for).
WITH clock AS (
    SELECT statement_timestamp() AT TIME ZONE 'UTC' AS now
), hooks AS (
    SELECT w.webhook_id, w.silent, w.ordering = {FIFO} AS fifo, w.rate_limit AS rate,
           c.cap AS asked, $2::int AS per_webhook, h.n, h.n = h.mine AS alone,
           CASE WHEN w.ordering = {FIFO} THEN 1 ELSE w.max_in_flight END AS own_cap, d.due
    FROM webhooks w
    CROSS JOIN clock
    CROSS JOIN LATERAL (
        SELECT q.next_attempt_at AS due
        FROM webhook_delivery_queue q
        WHERE q.webhook_id = w.webhook_id AND q.status = {PENDING}
          AND q.next_attempt_at <= clock.now
        ORDER BY q.next_attempt_at
        LIMIT 1
    ) d
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, count(*) FILTER (WHERE q.claimed_by = $1) AS mine
        FROM webhook_delivery_queue q
        WHERE q.webhook_id = w.webhook_id AND q.status = {INFLIGHT}
    ) h
    LEFT JOIN unnest($3::text[], $4::int[]) AS c(webhook_id, cap) ON c.webhook_id = w.webhook_id
    WHERE w.active AND ($6::text[] IS NULL OR w.webhook_id = ANY ($6::text[]))
), chosen AS (
    SELECT webhook_id FROM hooks WHERE {CAP} - n > 0 ORDER BY due, webhook_id LIMIT $5
)
SELECT c.webhook_id,
       pg_try_advisory_xact_lock({CLAIM_KEY}) AS locked
FROM chosen c
ORDER BY c.webhook_id;


-- name: claim_wait
-- Every webhook with work is being claimed by another daemon: wait for the first one's
-- claim to end (this claim holds no other lock, so it cannot deadlock), then claim it.
SELECT pg_advisory_xact_lock({CLAIM_KEY}) FROM (SELECT $1::text AS webhook_id) c;


-- name: CLAIM_KEY
-- The claim lock of webhook c.webhook_id (claim_hooks), one key per schema and webhook.
hashtextextended('webhookd/' || current_schema() || '/claim/' || c.webhook_id, 0);


-- name: claim
-- Up to $1 due rows, oldest first, none beyond its webhook's room: its cap (fifo: 1; else
-- the smaller cap the daemon asks for in $3/$4 within the webhook's own, max_in_flight or
-- $2; 1 for a webhook whose last attempt got no answer) less the rows every daemon holds
-- inflight for it. A daemon that is the only one holding a webhook's rows (or none holds
-- any) may claim ahead up to what it asks (rounds of a fast receiver, as on DuckDB): it
-- attempts no more than the cap at once, and while it holds more than the cap no other
-- daemon gets any, so the cap holds across daemons either way. A rate-limited webhook also gets no more rows than its token bucket
-- holds (queue/pacing.py does the same arithmetic for DuckDB): refilled here, and written
-- back with what this claim took. Webhooks with no room are excluded before the LIMIT, so
-- their rows cannot fill the candidates; candidates are ranked per webhook to keep within
-- the room left. A fifo webhook's rows behind its head have no next_attempt_at: only the
-- head can be a candidate. When a rate-limited webhook has candidates its bucket cannot
-- serve, it comes back as "short", with the first free slot (the later of its next token
-- and its rate_next_at): claim_move then moves every due row of it to the next slots, 1/rate
-- seconds apart, out of the due set, so no later claim reads them before their time (a
-- row is moved once as it becomes due). Rows of webhooks inactive or gone come back as
-- "strays" (the caller parks them). $5 candidates to read, $6 the lease in seconds, $7
-- this daemon's id, $8 the webhooks whose claim locks this transaction holds
-- (claim_hooks): only those are claimed from. The statement's own time, not the
-- transaction's: the claim may have waited on a claim lock.
WITH clock AS (
    SELECT statement_timestamp() AT TIME ZONE 'UTC' AS now
), held AS (
    SELECT q.webhook_id, count(*) AS n, count(*) FILTER (WHERE q.claimed_by = $7) AS mine
    FROM webhook_delivery_queue q
    WHERE q.status = {INFLIGHT} AND q.webhook_id = ANY ($8::text[])
    GROUP BY q.webhook_id
), hooks AS (
    SELECT w.webhook_id, w.silent, w.ordering = {FIFO} AS fifo, w.rate_limit AS rate,
           w.rate_next_at, c.cap AS asked, $2::int AS per_webhook, coalesce(h.n, 0) AS n,
           coalesce(h.n, 0) = coalesce(h.mine, 0) AS alone,
           CASE WHEN w.ordering = {FIFO} THEN 1 ELSE w.max_in_flight END AS own_cap,
           {TOKENS} AS tokens
    FROM webhooks w
    CROSS JOIN clock
    LEFT JOIN held h ON h.webhook_id = w.webhook_id
    LEFT JOIN unnest($3::text[], $4::int[]) AS c(webhook_id, cap) ON c.webhook_id = w.webhook_id
    WHERE w.active AND w.webhook_id = ANY ($8::text[])
), room AS (
    SELECT webhook_id, own_cap, rate, tokens, rate_next_at, fifo,
           fifo OR rate IS NOT NULL AS paced,
           {CAP} - n AS room,
           floor(tokens)::int AS allow
    FROM hooks
), few AS (
    -- Few webhooks with room (the usual case: a daemon's claims go to the webhooks it
    -- serves): each one's due rows are read from its own range of
    -- webhook_delivery_queue_webhook_pending, so rows of webhooks at their cap (another
    -- daemon's, say) are never read. Many: one walk of the due index serves them all.
    SELECT count(*) <= 64 AS yes FROM room WHERE room > 0
), candidates AS (
    -- Read, not locked: claims of a webhook run one at a time (claim_hooks); `locked` takes only the
    -- rows picked (FOR UPDATE SKIP LOCKED, still pending). Locking every candidate wrote
    -- each one's tuple (and WAL) per claim. Rows of webhooks inactive or gone (strays)
    -- show up in the walk only; upkeep parks them either way (park_strays).
    SELECT x.webhook_id, x.event_id, x.next_attempt_at, x.seq
    FROM room r
    CROSS JOIN LATERAL (
        SELECT q.webhook_id, q.event_id, q.next_attempt_at, q.seq
        FROM webhook_delivery_queue q
        WHERE q.webhook_id = r.webhook_id AND q.status = {PENDING}
          AND q.next_attempt_at <= (SELECT now FROM clock)
        ORDER BY q.next_attempt_at, q.seq
        LIMIT r.room
    ) x
    WHERE r.room > 0 AND (SELECT yes FROM few)
    UNION ALL
    (
        -- No more candidates than the rooms can take (4 per slot).
        SELECT q.webhook_id, q.event_id, q.next_attempt_at, q.seq
        FROM webhook_delivery_queue q
        WHERE NOT (SELECT yes FROM few)
          AND q.status = {PENDING}
          AND q.next_attempt_at <= (SELECT now FROM clock)
          AND q.webhook_id <> ALL (ARRAY(SELECT r.webhook_id FROM room r WHERE r.room <= 0))
        ORDER BY q.next_attempt_at
        LIMIT least($5::int,
                    4 * (SELECT coalesce(sum(r.room), 0) FROM room r WHERE r.room > 0))
    )
), ranked AS (
    SELECT c.webhook_id, c.event_id, c.next_attempt_at, c.seq, r.room, r.allow,
           row_number() OVER (PARTITION BY c.webhook_id
                              ORDER BY c.next_attempt_at, c.seq, c.event_id) AS rank
    FROM candidates c
    LEFT JOIN room r ON r.webhook_id = c.webhook_id
), picked AS (
    SELECT webhook_id, event_id
    FROM ranked
    WHERE rank <= room AND (allow IS NULL OR rank <= allow)
    ORDER BY next_attempt_at, seq, webhook_id, event_id
    LIMIT $1
), took AS (
    SELECT webhook_id, count(*) AS n FROM picked GROUP BY webhook_id
), short AS (
    -- Rate-limited webhooks with candidates their bucket cannot serve now: claim_move
    -- moves their due rows next, in this transaction.
    SELECT DISTINCT r.webhook_id
    FROM ranked r
    WHERE r.allow IS NOT NULL AND r.allow < r.room AND r.rank > r.allow
), paced AS (
    -- Each rate-limited webhook this claim drew on or found short: what its bucket holds
    -- after the claim, and the first slot for its waiting rows.
    SELECT r.webhook_id, r.rate, r.tokens - coalesce(t.n, 0) AS left_tokens,
           greatest((SELECT now FROM clock)
                        + make_interval(secs => greatest(0.0::float8,
                                                         1.0 - (r.tokens - coalesce(t.n, 0)))
                                                / r.rate),
                    coalesce(r.rate_next_at, '-infinity'::timestamp)) AS first_slot,
           s.webhook_id IS NOT NULL AS short
    FROM room r
    LEFT JOIN took t ON t.webhook_id = r.webhook_id
    LEFT JOIN short s ON s.webhook_id = r.webhook_id
    WHERE r.rate IS NOT NULL AND (t.n IS NOT NULL OR s.webhook_id IS NOT NULL)
), buckets AS (
    UPDATE webhooks w
    SET rate_tokens = p.left_tokens, rate_refilled_at = (SELECT now FROM clock)
    FROM paced p
    WHERE w.webhook_id = p.webhook_id
), locked AS (
    SELECT q.webhook_id, q.event_id
    FROM webhook_delivery_queue q
    JOIN picked p ON q.webhook_id = p.webhook_id AND q.event_id = p.event_id
    WHERE q.status = {PENDING}
    FOR UPDATE OF q SKIP LOCKED
), claimed AS (
    UPDATE webhook_delivery_queue q
    SET status = {INFLIGHT},
        lease_until = (SELECT now FROM clock) + make_interval(secs => $6),
        claimed_by = $7,
        updated_at = (SELECT now FROM clock)
    FROM locked p
    WHERE q.webhook_id = p.webhook_id AND q.event_id = p.event_id
    RETURNING q.webhook_id, q.event_id, q.attempts, q.retry_base, q.body, q.lease_until,
              q.next_attempt_at, q.seq, q.traceparent
)
SELECT 'claimed' AS kind, c.webhook_id, c.event_id, c.attempts, c.retry_base, c.body,
       c.lease_until, c.next_attempt_at, w.url, w.secret, w.previous_secret,
       w.previous_secret_expires_at, r.own_cap, r.paced, r.fifo, NULL::timestamp AS first_slot,
       NULL::float8 AS rate, (SELECT now FROM clock) AS now, w.delivery_options,
       c.traceparent
FROM claimed c
JOIN webhooks w ON w.webhook_id = c.webhook_id
JOIN room r ON r.webhook_id = c.webhook_id
UNION ALL
SELECT DISTINCT 'stray', r.webhook_id, NULL::text, NULL::int, NULL::int, NULL::bytea,
       NULL::timestamp, NULL::timestamp, NULL::text, NULL::text, NULL::text,
       NULL::timestamp, NULL::int, NULL::bool, NULL::bool, NULL::timestamp, NULL::float8,
       (SELECT now FROM clock), NULL::text, NULL::text
FROM ranked r
WHERE r.room IS NULL
UNION ALL
SELECT 'short', p.webhook_id, NULL::text, NULL::int, NULL::int, NULL::bytea,
       NULL::timestamp, NULL::timestamp, NULL::text, NULL::text, NULL::text,
       NULL::timestamp, NULL::int, NULL::bool, NULL::bool, p.first_slot, p.rate,
       (SELECT now FROM clock), NULL::text, NULL::text
FROM paced p
WHERE p.short;


-- name: claim_move
-- After a claim, in its transaction: every due row of the rate-limited webhooks $1 whose
-- bucket came up short (the rows handed out are inflight by now) moves to its slot, in
-- order: $2 the first slot of each, 1/$3 seconds apart; the webhook's rate_next_at goes
-- to the slot after the last. The rows are found through
-- webhook_delivery_queue_webhook_pending, one webhook at a time, and updated by ctid:
-- rows moved before are in the future and not read. $4 the clock of the claim, $5 the
-- last_error of a moved row, $6 the most rows moved per webhook by one claim (a burst of
-- due rows, say a redrive of many, is moved over several claims, none holding the claim
-- lock long).
WITH short AS (
    SELECT * FROM unnest($1::text[], $2::timestamp[], $3::float8[])
        AS s(webhook_id, first_slot, rate)
), waiting AS (
    SELECT s.webhook_id, s.first_slot, s.rate, x.row_id,
           row_number() OVER (PARTITION BY s.webhook_id
                              ORDER BY x.next_attempt_at, x.seq, x.event_id) AS k
    FROM short s
    CROSS JOIN LATERAL (
        SELECT q.ctid AS row_id, q.event_id, q.next_attempt_at, q.seq
        FROM webhook_delivery_queue q
        WHERE q.webhook_id = s.webhook_id AND q.status = {PENDING}
          AND q.next_attempt_at <= $4::timestamp
        ORDER BY q.next_attempt_at, q.seq, q.event_id
        LIMIT $6
    ) x
), moved AS (
    UPDATE webhook_delivery_queue q
    SET next_attempt_at = x.first_slot + make_interval(secs => (x.k - 1) / x.rate),
        last_error = $5,
        updated_at = $4::timestamp
    FROM waiting x
    WHERE q.ctid = x.row_id AND q.status = {PENDING}
    RETURNING q.webhook_id
), tails AS (
    UPDATE webhooks w
    SET rate_next_at = s.first_slot
                       + make_interval(secs => (SELECT count(*) FROM moved m
                                                WHERE m.webhook_id = s.webhook_id) / s.rate)
    FROM short s
    WHERE w.webhook_id = s.webhook_id
)
SELECT count(*) FROM moved;


-- name: record
-- A batch of outcomes in one statement. Each applies to its row only while the row still
-- holds the claim's lease (a late outcome of a claim that was rescued and claimed again
-- changes nothing). Spent outcomes count an attempt and are logged; the others (the
-- daemon's own resources failed) send the row back to pending with its error only. A
-- 410 deactivates the webhook and parks its pending rows; a retry of a webhook inactive
-- (or deactivated here) is parked. webhooks.silent follows the webhook's latest spent
-- outcome in the batch: no answer at all means one attempt at a time on every daemon.
-- Every CTE sees the same snapshot, so webhooks are updated by one CTE only. The fifo
-- webhooks of the batch come back in `fifo`: their order is settled (fifo.settle) by a
-- later statement, which sees these changes. Those with a due pending row, or a retry
-- in the batch due already, come back in `waiting` (the pending rows through
-- webhook_delivery_queue_webhook_pending): only for them can the slot an outcome frees
-- let a claim take a row (Store.record; the store adds a fifo webhook whose settling
-- lets its next row through).
-- A late outcome (its row no longer holds the claim's lease: rescued, maybe claimed and
-- delivered by another daemon) records what happened, in the log, marked late, and undoes
-- nothing others decided: it changes neither the row nor the webhook's silent flag. (A
-- 410 still deactivates the webhook: the endpoint asked to stop, whichever claim heard it.)
WITH given AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamp[],
                $6::timestamp[], $7::float8[], $8::int[], $9::text[], $10::text[],
                $11::text[], $12::bool[], $13::timestamp[], $14::bool[])
        WITH ORDINALITY
        AS o(webhook_id, event_id, status, attempt, next_attempt_at, attempted_at,
             duration_ms, status_code, error, response_excerpt, outcome, deactivate,
             claimed_until, spent, ord)
), o AS (
    SELECT g.*,
           EXISTS (SELECT 1 FROM webhook_delivery_queue q
                   WHERE q.webhook_id = g.webhook_id AND q.event_id = g.event_id
                     AND q.status = {INFLIGHT}
                     AND (g.claimed_until IS NULL OR q.lease_until = g.claimed_until)) AS live
    FROM given g
), hooks AS (
    SELECT o.webhook_id,
           bool_or(o.deactivate) AS gone,
           (array_agg(o.status_code IS NULL ORDER BY o.ord DESC)
                FILTER (WHERE o.spent AND o.live))[1] AS silent,
           coalesce(bool_or(w.active), false) AND NOT bool_or(o.deactivate) AS active,
           coalesce(bool_or(w.ordering = {FIFO}), false) AS fifo
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
    SET status = CASE WHEN o.status = {PENDING} AND NOT h.active THEN {PARKED}
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
      AND q.status = {INFLIGHT}
      AND (o.claimed_until IS NULL OR q.lease_until = o.claimed_until)
    RETURNING q.webhook_id, q.event_id
), logged AS (
    INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at, duration_ms,
                                    status_code, error, response_excerpt, outcome)
    SELECT o.webhook_id, o.event_id, o.attempt, o.attempted_at, o.duration_ms, o.status_code,
           CASE WHEN r.event_id IS NULL
                THEN 'late, not applied: the claim had lost its lease (the delivery was '
                     || 're-driven)' || coalesce('; ' || o.error, '')
                ELSE o.error END,
           o.response_excerpt, o.outcome
    FROM o
    LEFT JOIN rows_changed r ON r.webhook_id = o.webhook_id AND r.event_id = o.event_id
    WHERE o.spent
    ORDER BY o.ord
), gone_parked AS (
    -- pending rows only: never a row of rows_changed (inflight), so no row is changed twice
    UPDATE webhook_delivery_queue q
    SET status = {PARKED}, lease_until = NULL, claimed_by = NULL,
        updated_at = now() AT TIME ZONE 'UTC'
    FROM hooks h
    WHERE h.gone AND q.webhook_id = h.webhook_id AND q.status = {PENDING}
)
SELECT count(*) AS n,
       (SELECT array_agg(h.webhook_id) FROM hooks h WHERE h.fifo) AS fifo,
       (SELECT array_agg(h.webhook_id) FROM hooks h
        WHERE EXISTS (SELECT 1 FROM o
                      WHERE o.webhook_id = h.webhook_id AND o.status = {PENDING}
                        AND o.next_attempt_at <= now() AT TIME ZONE 'UTC')
           OR EXISTS (SELECT 1 FROM webhook_delivery_queue q
                      WHERE q.webhook_id = h.webhook_id AND q.status = {PENDING}
                        AND q.next_attempt_at <= now() AT TIME ZONE 'UTC')) AS waiting
FROM rows_changed;


-- name: release
-- Rows this daemon claimed and hands back (shutdown, a silent webhook's extra rows): due
-- now, or parked when their webhook is inactive or gone; wakes the workers. Their
-- webhooks come back in `hooks` (fifo.settle keeps a fifo webhook's order).
WITH released AS (
    UPDATE webhook_delivery_queue q
    SET status = CASE WHEN EXISTS (SELECT 1 FROM webhooks w
                                   WHERE w.webhook_id = q.webhook_id AND w.active)
                      THEN {PENDING} ELSE {PARKED} END,
        next_attempt_at = now() AT TIME ZONE 'UTC',
        lease_until = NULL,
        claimed_by = NULL,
        updated_at = now() AT TIME ZONE 'UTC'
    FROM unnest($1::text[], $2::text[]) AS k(webhook_id, event_id)
    WHERE q.webhook_id = k.webhook_id AND q.event_id = k.event_id
      AND q.status = {INFLIGHT} AND q.claimed_by = $3
    RETURNING q.status, q.webhook_id
), counted AS (
    SELECT count(*) AS n, count(*) FILTER (WHERE status = {PENDING}) AS due,
           array_agg(DISTINCT webhook_id) AS hooks
    FROM released
)
SELECT n, hooks,
       (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                              WHERE due > 0) notified) AS notified
FROM counted;


-- name: rescue_expired
-- Inflight rows whose lease ran out before $1 (the caller's time on the database's clock:
-- store.py, PostgresStore.skew), or whose daemon is not registered or has not beaten its
-- heart for $2 seconds by the database's clock: due now, or parked when their webhook is
-- inactive or gone. Daemons silent for $3 seconds are forgotten (their
-- rows are rescued here all the same: an unregistered claimant is a dead one).
WITH rescued AS (
    UPDATE webhook_delivery_queue q
    SET status = CASE WHEN EXISTS (SELECT 1 FROM webhooks w
                                   WHERE w.webhook_id = q.webhook_id AND w.active)
                      THEN {PENDING} ELSE {PARKED} END,
        next_attempt_at = now() AT TIME ZONE 'UTC',
        lease_until = NULL,
        claimed_by = NULL,
        updated_at = now() AT TIME ZONE 'UTC'
    WHERE q.status = {INFLIGHT}
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
    SELECT count(*) AS n, count(*) FILTER (WHERE status = {PENDING}) AS due FROM rescued
)
SELECT n, (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                                 WHERE due > 0) notified) AS notified
FROM counted;


-- name: park_strays
-- Pending rows of webhooks inactive or gone become parked: every path that deactivates or
-- deletes a webhook parks its rows, and claims park those they meet, but a row enqueued
-- while its webhook was being deactivated would otherwise wait for ever. The webhooks
-- with pending rows are found by a loose index scan of webhook_delivery_queue_webhook_pending
-- (one probe per webhook, not one per row).
WITH RECURSIVE pending_hooks AS (
    (SELECT q.webhook_id FROM webhook_delivery_queue q
     WHERE q.status = {PENDING} ORDER BY q.webhook_id LIMIT 1)
    UNION ALL
    SELECT (SELECT q.webhook_id FROM webhook_delivery_queue q
            WHERE q.status = {PENDING} AND q.webhook_id > p.webhook_id
            ORDER BY q.webhook_id LIMIT 1)
    FROM pending_hooks p
    WHERE p.webhook_id IS NOT NULL
)
SELECT p.webhook_id
FROM pending_hooks p
WHERE p.webhook_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = p.webhook_id AND w.active);


-- name: fifo_lock
-- The fifo webhooks among $1, each locked for this transaction (in one order, so two
-- transactions cannot deadlock on them) before fifo_settle reads them: fifo_settle then
-- sees every change the transactions before it committed (a finished head, new rows, rows
-- made due again), whichever daemon made them, and two of them never both miss one.
SELECT f.webhook_id,
       pg_advisory_xact_lock(hashtextextended('webhookd/' || current_schema() || '/fifo/'
                                              || f.webhook_id, 0)) AS locked
FROM (SELECT w.webhook_id FROM webhooks w
      WHERE w.webhook_id = ANY ($1::text[]) AND w.ordering = {FIFO}
      ORDER BY w.webhook_id) f;


-- name: fifo_settle
-- Restore the order of the fifo webhooks $1 (locked by fifo_lock) after their rows
-- changed. A webhook's head is the lowest seq of its pending and inflight rows, found in
-- O(log n) through webhook_delivery_queue_webhook_pending (the rows waiting behind the
-- head are last in it, in seq order, with no next_attempt_at) and the inflight index.
-- The head, if pending and waiting, is made due now (promoted); a pending row behind it
-- that has a time loses it (demoted: a lower seq came back). Rows inflight stay so.
-- Wakes the workers when a head was promoted.
WITH heads AS (
    SELECT h.webhook_id,
           least((SELECT q.seq FROM webhook_delivery_queue q
                  WHERE q.webhook_id = h.webhook_id AND q.status = {PENDING}
                    AND q.next_attempt_at IS NULL
                  ORDER BY q.next_attempt_at, q.seq LIMIT 1),
                 (SELECT q.seq FROM webhook_delivery_queue q
                  WHERE q.webhook_id = h.webhook_id AND q.status = {PENDING}
                    AND q.next_attempt_at IS NOT NULL
                  ORDER BY q.seq LIMIT 1),
                 (SELECT min(q.seq) FROM webhook_delivery_queue q
                  WHERE q.webhook_id = h.webhook_id AND q.status = {INFLIGHT})) AS head
    FROM unnest($1::text[]) AS h(webhook_id)
), demoted AS (
    UPDATE webhook_delivery_queue q
    SET next_attempt_at = NULL, updated_at = now() AT TIME ZONE 'UTC'
    FROM heads h
    WHERE q.webhook_id = h.webhook_id AND q.status = {PENDING}
      AND q.next_attempt_at IS NOT NULL AND q.seq > h.head
    RETURNING 1
), promoted AS (
    UPDATE webhook_delivery_queue q
    SET next_attempt_at = now() AT TIME ZONE 'UTC', updated_at = now() AT TIME ZONE 'UTC'
    FROM heads h
    WHERE q.webhook_id = h.webhook_id AND q.status = {PENDING}
      AND q.next_attempt_at IS NULL AND q.seq = h.head
    RETURNING 1
), counted AS (
    SELECT count(*) AS n FROM promoted
)
SELECT n, (SELECT count(*) FROM demoted) AS demoted,
       (SELECT count(*) FROM (SELECT pg_notify(current_schema() || '.deliveries', '')
                              WHERE n > 0) notified) AS notified
FROM counted;


-- name: fifo_blocked
-- The head of every fifo webhook (the lowest seq of its pending and inflight rows, each
-- kind found through its own index) that failed since it became the head or was last
-- redriven or replayed, with the time of the first such failure in the log (its last
-- attempt if the log was pruned).
SELECT w.webhook_id, hd.event_id, hd.attempts,
       coalesce((SELECT min(l.attempted_at) FROM webhook_deliveries l
                 WHERE l.webhook_id = w.webhook_id AND l.event_id = hd.event_id
                   AND l.attempt > hd.retry_base),
                hd.last_attempt_at) AS since
FROM webhooks w
CROSS JOIN LATERAL (
    SELECT c.* FROM (
        (SELECT q.event_id, q.seq, q.attempts, q.retry_base, q.last_attempt_at
         FROM webhook_delivery_queue q
         WHERE q.webhook_id = w.webhook_id AND q.status = {PENDING}
           AND q.next_attempt_at IS NULL
         ORDER BY q.next_attempt_at, q.seq LIMIT 1)
        UNION ALL
        (SELECT q.event_id, q.seq, q.attempts, q.retry_base, q.last_attempt_at
         FROM webhook_delivery_queue q
         WHERE q.webhook_id = w.webhook_id AND q.status = {PENDING}
           AND q.next_attempt_at IS NOT NULL
         ORDER BY q.seq LIMIT 1)
        UNION ALL
        (SELECT q.event_id, q.seq, q.attempts, q.retry_base, q.last_attempt_at
         FROM webhook_delivery_queue q
         WHERE q.webhook_id = w.webhook_id AND q.status = {INFLIGHT}
         ORDER BY q.seq LIMIT 1)
    ) c
    ORDER BY c.seq LIMIT 1
) hd
WHERE w.ordering = {FIFO} AND hd.attempts > hd.retry_base
ORDER BY w.webhook_id;


-- name: stale_statistics
-- The tables of $1 in this schema whose rows changed, since their last ANALYZE, as many
-- times as they held rows then (reltuples; -1 if never analyzed), and at least $2 times
-- (statistics.py).
SELECT s.relname
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY ($1::text[])
  AND s.n_mod_since_analyze >= greatest($2::float8, c.reltuples);



-- Below: the statements of the webhook and operator functions (store/postgres/admin.py),
-- operational events (operational.py), tenant tokens, leadership and the pieces every
-- module shares (common.py, fifo.py), under the DuckDB file's name wherever it has the
-- same operation. {WEBHOOK_COLUMNS}, {DELIVERY_COLUMNS} and {ATTEMPT_COLUMNS} are the
-- columns store/records.py formats. An optional filter is `($n::type IS NULL OR ...)`, as
-- on DuckDB, where the statements of old were composed of the filters given. Measured on
-- 100k queue rows (plan_cache_mode auto, each kind of call six times in turn):
-- list_deliveries and redrive keep custom plans, where the NULL branches fold away and the
-- index of what is left serves (their generic plan, a full scan, costs more than any
-- custom one); status_* and replay* go generic with the plans the composed statements had.


-- Pieces every module uses (common.py, fifo.py, listen.py, leader.py).

-- name: now
-- The database's clock, which decides every time on a shared queue, as the tables keep it.
SELECT now() AT TIME ZONE 'UTC';


-- name: notify
-- Wake every daemon on this schema waiting for work of kind $1 (sent at commit).
SELECT pg_notify(current_schema() || '.' || $1, '');


-- name: ping
-- A listening connection's keep-alive (listen.py).
SELECT 1;


-- name: park_inactive
-- Pending rows of the webhooks $2 that are inactive or gone become parked (Event.DISABLE).
UPDATE webhook_delivery_queue q SET status = {PARKED}, lease_until = NULL, claimed_by = NULL,
    updated_at = $1
WHERE q.status IN {SOURCES_DISABLE}
  AND q.webhook_id = ANY ($2::text[])
  AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = q.webhook_id AND w.active);


-- name: fifo_webhooks
SELECT webhook_id FROM webhooks WHERE ordering = {FIFO};


-- name: lead
-- Take over from a leader whose heartbeat is stale (or who left), and say whether this
-- daemon ($1) leads, its own heartbeat fresh ($2 seconds, peer_timeout). A concurrent
-- takeover by another daemon makes this UPDATE wait for it, then find the row taken by a
-- live daemon (READ COMMITTED re-checks the row), and update nothing (leader.py).
WITH fresh AS (
    SELECT d.daemon_id FROM daemons d
    WHERE d.heartbeat_at >= now() AT TIME ZONE 'UTC' - make_interval(secs => $2)
), took AS (
    UPDATE upkeep_leader l SET daemon_id = $1, since = now() AT TIME ZONE 'UTC'
    WHERE l.name = 'upkeep'
      AND $1 IN (SELECT daemon_id FROM fresh)
      AND l.daemon_id IS DISTINCT FROM $1
      AND (l.daemon_id IS NULL OR l.daemon_id NOT IN (SELECT daemon_id FROM fresh))
    RETURNING l.daemon_id
)
SELECT EXISTS (SELECT 1 FROM took)
    OR EXISTS (SELECT 1 FROM upkeep_leader l
               WHERE l.name = 'upkeep' AND l.daemon_id = $1
                 AND $1 IN (SELECT daemon_id FROM fresh));


-- Webhooks (admin.py).

-- name: get_webhook
SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = $1;


-- name: create_webhook
-- $6 the database's clock: created, updated and health reset at once.
INSERT INTO webhooks (webhook_id, url, secret, event_types, active, description,
                      created_at, updated_at, health_reset_at,
                      rate_limit, max_in_flight, ordering,
                      delivery_options, public_key, tenant)
VALUES ($1, $2, $3, $4::text[], true, $5, $6, $6, $6, $7, $8, $9, $10, $11, $12)
RETURNING {WEBHOOK_COLUMNS};


-- name: get_webhook_secrets
SELECT url, secret, previous_secret, previous_secret_expires_at, delivery_options
FROM webhooks WHERE webhook_id = $1;


-- name: list_webhooks
-- After webhook $1, of tenant $3 if not NULL, at most $2.
SELECT {WEBHOOK_COLUMNS} FROM webhooks
WHERE webhook_id > $1 AND ($3::text IS NULL OR tenant = $3)
ORDER BY webhook_id LIMIT $2;


-- name: webhook_pace
-- What an update of a webhook compares its patch with, locked: two operators enabling and
-- disabling at once apply one after the other.
SELECT active, webhook_id, ordering, max_in_flight, rate_limit, rate_tokens,
       rate_refilled_at, rate_next_at, delivery_options
FROM webhooks WHERE webhook_id = $1 FOR UPDATE;


-- name: update_webhook
-- The one statement composed at run time: admin.py writes the SET list in place of the
-- lowercase placeholder, `column = $n` from $2 on for each column the patch sets
-- (queue/webhooks.plan_patch), as the DuckDB engine does: which columns a patch sets
-- varies, and a column is written only when the patch sets it. $1 the webhook.
UPDATE webhooks SET {sets} WHERE webhook_id = $1;


-- name: rate_limited_due
-- The rows of webhook $1 that waited for its old rate limit (last_error $3): due now ($2),
-- paced again.
UPDATE webhook_delivery_queue SET next_attempt_at = $2, updated_at = $2
WHERE webhook_id = $1 AND status = {PENDING} AND next_attempt_at > $2 AND last_error = $3;


-- name: fifo_waiting_due
-- The rows of webhook $1 that waited behind its head: due now ($2), in any order.
UPDATE webhook_delivery_queue SET next_attempt_at = $2, updated_at = $2
WHERE webhook_id = $1 AND status = {PENDING} AND next_attempt_at IS NULL;


-- name: delete_webhook
DELETE FROM webhooks WHERE webhook_id = $1 RETURNING 1;


-- name: rotate_secret
-- $5 public_key: the new key's, for a v1a webhook (NULL for v1).
UPDATE webhooks SET previous_secret = secret, secret = $1,
    previous_secret_expires_at = $2, updated_at = $3, public_key = $5
WHERE webhook_id = $4
RETURNING {WEBHOOK_COLUMNS};


-- Operators (admin.py).

-- name: list_deliveries
-- Newest first, filtered by webhook $1, event $2, status $3 and tenant $4 (each if not
-- NULL), after the cursor ($5, $6, $7: created_at, webhook_id, event_id) if there is one,
-- at most $8.
SELECT {DELIVERY_COLUMNS} FROM webhook_delivery_queue
WHERE ($1::text IS NULL OR webhook_id = $1) AND ($2::text IS NULL OR event_id = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = $4))
  AND ($5::timestamp IS NULL
       OR (created_at, webhook_id, event_id) < ($5::timestamp, $6::text, $7::text))
ORDER BY created_at DESC, webhook_id DESC, event_id DESC LIMIT $8;


-- name: list_attempts
SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries
WHERE webhook_id = $1 AND event_id = $2 ORDER BY attempt_id;


-- name: delivery_exists
SELECT 1 FROM webhook_delivery_queue WHERE webhook_id = $1 AND event_id = $2;


-- name: enable
-- The parked rows of webhook $2, enabled again: due now ($1), with a fresh budget; how
-- many per webhook.
WITH due AS (
    UPDATE webhook_delivery_queue SET status = {PENDING}, next_attempt_at = $1,
        lease_until = NULL, claimed_by = NULL, retry_base = attempts, updated_at = $1
    WHERE status IN {SOURCES_ENABLE} AND webhook_id = $2
    RETURNING webhook_id)
SELECT webhook_id, count(*) FROM due GROUP BY webhook_id;


-- name: redrive
-- The rows in state $2 (of webhook $3, of tenant $4 and last attempted since $5, each if
-- not NULL): due now ($1), with a fresh budget; how many per webhook.
WITH due AS (
    UPDATE webhook_delivery_queue SET status = {PENDING}, next_attempt_at = $1,
        lease_until = NULL, claimed_by = NULL, retry_base = attempts, updated_at = $1
    WHERE status IN {SOURCES_REDRIVE} AND status = $2::text
      AND ($3::text IS NULL OR webhook_id = $3)
      AND ($4::text IS NULL
           OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = $4))
      AND ($5::timestamp IS NULL OR last_attempt_at >= $5)
    RETURNING webhook_id)
SELECT webhook_id, count(*) FROM due GROUP BY webhook_id;


-- name: replay
-- The finished rows of event $2 (to webhook $3 if not NULL): due now ($1), with a fresh
-- budget; how many per webhook.
WITH due AS (
    UPDATE webhook_delivery_queue SET status = {PENDING}, next_attempt_at = $1,
        lease_until = NULL, claimed_by = NULL, retry_base = attempts, updated_at = $1
    WHERE status IN {SOURCES_REPLAY} AND event_id = $2
      AND ($3::text IS NULL OR webhook_id = $3)
    RETURNING webhook_id)
SELECT webhook_id, count(*) FROM due GROUP BY webhook_id;


-- name: replay_event
-- What replay needs of event $1: its body, or what to build one from if a producer wrote
-- it in SQL and no scan has built it yet.
SELECT event_type, occurred_at, payload::text, body, tenant FROM pipeline_events
WHERE event_id = $1;


-- name: replay_body
-- The body replay built for event $1 (written in SQL, not scanned yet): the same bytes the
-- scanner builds, whoever stores them first.
UPDATE pipeline_events SET body = $2 WHERE event_id = $1 AND body IS NULL;


-- name: webhook_exists
-- Its tenant (a row with NULL if none), or no row.
SELECT tenant FROM webhooks WHERE webhook_id = $1;


-- name: replay_enqueue
-- Rows pruned after delivery, or not enqueued yet, come back from the event source: event
-- $4 (body $3) for webhook $1 whatever its filter, or if $1 is NULL for every active
-- webhook that takes it; due now ($2).
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, body, created_at, updated_at, seq,
                                    traceparent)
SELECT w.webhook_id, e.event_id, {PENDING}, 0, 0, $2::timestamp, $3::bytea,
       $2::timestamp, $2::timestamp, e.seq, e.traceparent
FROM pipeline_events e
JOIN webhooks w ON (w.webhook_id = $1::text OR ($1::text IS NULL AND {MATCHES}))
WHERE e.event_id = $4
ON CONFLICT DO NOTHING
RETURNING webhook_id;


-- name: status_counts
-- Of tenant $1 if not NULL, as status_oldest_due and status_webhooks.
SELECT webhook_id, status, count(*) FROM webhook_delivery_queue
WHERE ($1::text IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = $1))
GROUP BY webhook_id, status;


-- name: status_oldest_due
SELECT min(next_attempt_at) FROM webhook_delivery_queue
WHERE status = {PENDING} AND next_attempt_at <= $2
  AND ($1::text IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = $1));


-- name: status_scanner
-- The cursor and the scanner's lag: the events of transactions it has not scanned yet
-- (those running at its snapshot, and those that began later), less the part of a batch
-- in progress it has scanned (scan_read). The last is the highest seq to scan.
SELECT c.seq, l.n, l.high FROM scanner_cursor c
CROSS JOIN LATERAL (
    SELECT count(*) AS n, max(e.seq) AS high FROM pipeline_events e
    WHERE (e.xid = ANY (ARRAY(SELECT pg_snapshot_xip(c.snap)))
           OR e.xid >= pg_snapshot_xmax(c.snap))
      AND NOT (c.target IS NOT NULL AND pg_visible_in_snapshot(e.xid, c.target)
               AND (e.xid, e.seq) <= (c.xid, c.seq))) l
WHERE c.name = 'main';


-- name: status_webhooks
SELECT webhook_id, active, disabled_reason FROM webhooks
WHERE ($1::text IS NULL OR tenant = $1) ORDER BY webhook_id;


-- name: status_rejected
-- The events the scanner set aside (written in SQL with no body it could build).
SELECT count(*) FROM rejected_events;


-- name: prune_delivered
-- One batch ($2) of delivered rows last changed before $1, deleted by ctid; the DELETE
-- checks the row's state again: a row another transaction replayed meanwhile stays.
DELETE FROM webhook_delivery_queue
WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM webhook_delivery_queue
        WHERE status = {DELIVERED} AND updated_at < $1
        ORDER BY updated_at LIMIT $2))
  AND status = {DELIVERED} AND updated_at < $1;


-- name: prune_attempts
-- One batch ($2) of log rows attempted before $1.
DELETE FROM webhook_deliveries
WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM webhook_deliveries WHERE attempted_at < $1
        ORDER BY attempted_at LIMIT $2))
  AND attempted_at < $1;


-- name: failing_since
-- A webhook fails since its first attempt after its last delivered one (or after it was
-- created or last enabled).
UPDATE webhooks AS w SET failing_since = f.since
FROM (
    SELECT h.webhook_id,
           (SELECT min(l.attempted_at) FROM webhook_deliveries l
            WHERE l.webhook_id = h.webhook_id
              AND l.attempted_at >= coalesce(h.health_reset_at, h.created_at)
              AND l.attempted_at > coalesce(
                  (SELECT max(ok.attempted_at) FROM webhook_deliveries ok
                   WHERE ok.webhook_id = h.webhook_id
                     AND ok.outcome = {DELIVERED}),
                  '-infinity'::timestamp)) AS since
    FROM webhooks h WHERE h.active
) f
WHERE w.webhook_id = f.webhook_id
  AND w.failing_since IS DISTINCT FROM f.since;


-- name: auto_disable
-- Deactivate the webhooks failing since before $2 (at $1).
UPDATE webhooks SET active = false, updated_at = $1,
    disabled_reason = 'every attempt failed since '
        || to_char(failing_since, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
WHERE active AND failing_since IS NOT NULL AND failing_since < $2
RETURNING webhook_id, tenant, event_types, disabled_reason;


-- Operational events (operational.py). Every webhook a report depends on is locked
-- (FOR UPDATE, in webhook order), so that with several daemons one of them reports it.

-- name: record_gone
-- The webhooks $1 whose endpoint answered 410, deactivated at $2 before the record
-- statement (which then parks their rows).
UPDATE webhooks SET active = false, updated_at = $2,
    disabled_reason = 'the endpoint answered 410 Gone'
WHERE active AND webhook_id = ANY ($1::text[])
RETURNING webhook_id, tenant, event_types, disabled_reason;


-- name: operational_dead
-- Which of the rows ($1, $2) the record statement of this transaction made dead (updated
-- at its clock), leaving out deliveries of operational events: they report nothing.
SELECT q.webhook_id, q.event_id FROM webhook_delivery_queue q
JOIN unnest($1::text[], $2::text[]) AS k(webhook_id, event_id)
  ON q.webhook_id = k.webhook_id AND q.event_id = k.event_id
JOIN pipeline_events e ON e.event_id = q.event_id
WHERE q.status = {DEAD} AND q.updated_at = (now() AT TIME ZONE 'UTC')
  AND NOT starts_with(e.event_type, 'webhookd.');


-- name: operational_tallies
SELECT webhook_id, tenant, event_types, dead_count, dead_first_event, dead_last_event,
       dead_first_at, dead_reported_at
FROM webhooks WHERE webhook_id = ANY ($1::text[])
ORDER BY webhook_id FOR UPDATE;


-- name: operational_dead_due
-- The webhooks with dead deliveries to report whose last report is at least a window old.
SELECT webhook_id, tenant, event_types, dead_count, dead_first_event, dead_last_event,
       dead_first_at, dead_reported_at
FROM webhooks WHERE dead_count > 0 AND (dead_reported_at IS NULL OR dead_reported_at <= $1)
ORDER BY webhook_id FOR UPDATE;


-- name: operational_tally_set
UPDATE webhooks SET dead_count = $2, dead_first_event = $3, dead_last_event = $4,
    dead_first_at = $5, dead_reported_at = $6
WHERE webhook_id = $1;


-- name: operational_failing
-- Active webhooks failing since before $1 whose episode is not reported yet.
SELECT webhook_id, tenant, event_types, failing_since FROM webhooks
WHERE active AND failing_since IS NOT NULL AND failing_since < $1
  AND failing_reported IS DISTINCT FROM failing_since
ORDER BY webhook_id FOR UPDATE;


-- name: operational_recovered
-- Active webhooks reported failing that delivered since (failing_since cleared or moved on).
SELECT webhook_id, tenant, event_types, failing_reported FROM webhooks
WHERE active AND failing_reported IS NOT NULL
  AND failing_since IS DISTINCT FROM failing_reported
ORDER BY webhook_id FOR UPDATE;


-- name: operational_failing_set
-- The failing episode reported of webhook $1: $2 (its failing_since, read under the lock
-- of operational_failing), or NULL when it recovered.
UPDATE webhooks SET failing_reported = $2 WHERE webhook_id = $1;


-- Tenant tokens (tenant_tokens.py): digests only.

-- name: tenant_token_create
INSERT INTO tenant_tokens (token_id, tenant, digest, description, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6);


-- name: tenant_token_list
SELECT token_id, tenant, digest, description, created_at, expires_at FROM tenant_tokens
WHERE tenant = $1 ORDER BY created_at, token_id;


-- name: tenant_token_revoke
DELETE FROM tenant_tokens WHERE tenant = $1 AND token_id = $2 RETURNING token_id;


-- name: tenant_token_find
SELECT token_id, tenant, digest, description, created_at, expires_at FROM tenant_tokens
WHERE token_id = $1;
