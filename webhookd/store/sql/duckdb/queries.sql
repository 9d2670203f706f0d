-- The DuckDB engine's statements, one named query per section ("-- name: X"), ? for the
-- parameters in order. Loaded by webhookd/store/queries.py (comment lines dropped): the
-- same operation has the same name here and in sql/postgresql/queries.sql. {PENDING},
-- {FIFO}, {SOURCES_CLAIM} and the like are the names of webhookd/states.py and
-- store/base.Ordering; {MATCHES} which active webhooks take an event (e the event, w the
-- webhook); {WEBHOOK_COLUMNS}, {DELIVERY_COLUMNS} and {ATTEMPT_COLUMNS} the columns that
-- store/records.py formats. Lists are matched with list_contains: `IN (SELECT unnest(?))`
-- plans a semi-join that costs twice as much.
--
-- Every statement that writes the webhooks table must say so in its text (UPDATE
-- webhooks, INSERT INTO webhooks, DELETE FROM webhooks): the main writer's cursor forgets
-- what it remembers of that table when it sees one (duckdb/common.Cursor).


-- name: park_inactive
-- Pending rows of the webhooks ? (inactive or gone) become parked (Event.DISABLE).
UPDATE webhook_delivery_queue SET status = {PARKED}, lease_until = NULL, updated_at = ?
WHERE status IN {SOURCES_DISABLE}
  AND list_contains(?::VARCHAR[], webhook_id)
RETURNING 1;


-- name: active_hooks
SELECT webhook_id, url, secret, previous_secret, previous_secret_expires_at, delivery_options
FROM webhooks WHERE active AND list_contains(?::VARCHAR[], webhook_id);


-- name: fifo_webhooks
SELECT webhook_id FROM webhooks WHERE ordering = {FIFO};


-- name: fifo_settle
-- Restore the order of the fifo webhooks ? after their rows changed (duckdb/fifo.py).
UPDATE webhook_delivery_queue AS q
SET next_attempt_at = CASE WHEN q.seq = h.head THEN ? ELSE NULL END, updated_at = ?
FROM (SELECT webhook_id, min(seq) AS head FROM webhook_delivery_queue
      WHERE status IN ({PENDING}, {INFLIGHT})
        AND list_contains(?::VARCHAR[], webhook_id)
      GROUP BY webhook_id) h
WHERE q.webhook_id = h.webhook_id AND q.status = {PENDING}
  AND ((q.seq = h.head AND q.next_attempt_at IS NULL)
       OR (q.seq > h.head AND q.next_attempt_at IS NOT NULL));


-- name: fifo_blocked
-- The head of every fifo webhook ? that failed since it became the head or was last
-- redriven (attempts > retry_base).
SELECT q.webhook_id, q.event_id, q.attempts, q.retry_base, q.last_attempt_at
FROM webhook_delivery_queue q
JOIN (SELECT webhook_id, min(seq) AS head FROM webhook_delivery_queue
      WHERE status IN ({PENDING}, {INFLIGHT})
        AND list_contains(?::VARCHAR[], webhook_id)
      GROUP BY webhook_id) h ON q.webhook_id = h.webhook_id AND q.seq = h.head
WHERE q.status IN ({PENDING}, {INFLIGHT}) AND q.attempts > q.retry_base
ORDER BY q.webhook_id;


-- name: fifo_blocked_since
-- The first failure of a blocked head since its retry base.
SELECT min(attempted_at) FROM webhook_deliveries
WHERE webhook_id = ? AND event_id = ? AND attempt > ?;


-- name: rescue_orphans
-- At start-up: every row left inflight belongs to a process that is gone (the file lock).
UPDATE webhook_delivery_queue SET status = {PENDING}, lease_until = NULL,
    next_attempt_at = ?, updated_at = ?
WHERE status IN {SOURCES_LEASE_EXPIRED}
RETURNING webhook_id;


-- name: rescue_expired
-- Inflight rows whose lease ran out before ?: due now.
UPDATE webhook_delivery_queue SET status = {PENDING}, lease_until = NULL,
    next_attempt_at = ?, updated_at = ?
WHERE status IN {SOURCES_LEASE_EXPIRED} AND lease_until < ?
RETURNING webhook_id;


-- name: ingest_known
-- The stored type, tenant and body of the ids ?, for queue/conflicts.same_content.
SELECT event_id, event_type, tenant, body FROM pipeline_events
WHERE event_id IN (SELECT unnest(?::VARCHAR[]));


-- name: ingest
INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at, ingested_at,
                             tenant, traceparent)
SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]),
       unnest(?::BLOB[]), unnest(?::TIMESTAMP[]), ?, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]);


-- name: ingest_one
-- ingest for one event, as an idle producer sends them (0.66 ms against 1.0 ms for its
-- lists of one). The same columns in the same order; its seq (0.06 ms more), for the
-- main writer's next scan (store/duckdb/fresh.py).
INSERT INTO pipeline_events (event_id, event_type, payload, body, occurred_at, ingested_at,
                             tenant, traceparent)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
RETURNING seq;


-- name: scan_cursor
SELECT seq FROM scanner_cursor WHERE name = 'main';


-- name: scan_read
-- How many events follow the cursor ? (none after seq ?, at most ?), up to which seq.
SELECT count(*), max(seq)
FROM (SELECT seq FROM pipeline_events
      WHERE seq > ? AND seq <= ? AND NOT starts_with(event_type, 'webhookd.')
      ORDER BY seq LIMIT ?);


-- name: scan_enqueue
-- The events after the cursor up to the last one read, for every matching webhook. A
-- fifo webhook's new rows wait behind its head (no next_attempt_at). No ON CONFLICT
-- (see batches.scan_once): scan_enqueue_again has it.
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, body, created_at, updated_at, seq,
                                    traceparent)
SELECT w.webhook_id, e.event_id, {PENDING}, 0, 0,
       CASE WHEN w.ordering = {FIFO} THEN NULL ELSE ?::TIMESTAMP END,
       e.body, ?, ?, e.seq, e.traceparent
FROM pipeline_events e
JOIN webhooks w ON {MATCHES}
WHERE e.seq > ? AND e.seq <= ? AND NOT starts_with(e.event_type, 'webhookd.');


-- name: scan_enqueue_again
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, body, created_at, updated_at, seq,
                                    traceparent)
SELECT w.webhook_id, e.event_id, {PENDING}, 0, 0,
       CASE WHEN w.ordering = {FIFO} THEN NULL ELSE ?::TIMESTAMP END,
       e.body, ?, ?, e.seq, e.traceparent
FROM pipeline_events e
JOIN webhooks w ON {MATCHES}
WHERE e.seq > ? AND e.seq <= ? AND NOT starts_with(e.event_type, 'webhookd.')
ON CONFLICT DO NOTHING;


-- name: scan_few
-- The events after the cursor ?, whole, at most ? of them: in no order (ORDER BY cost
-- 0.55 ms of 1.3), so fewer than asked means all of them (batches.enqueue_claimed).
SELECT seq, event_id, event_type, tenant, body, traceparent FROM pipeline_events
WHERE seq > ? AND NOT starts_with(event_type, 'webhookd.')
LIMIT ?;


-- name: routes
-- The active webhooks, for queue/routes.Routes: the scan's MATCHES, in Python.
SELECT webhook_id, tenant, event_types FROM webhooks WHERE active;


-- name: enqueue_claimed
-- scan_enqueue's rows for the webhooks and events ?, already claimed by the scan's claim
-- request (inflight, leased until ?), as claim_take leaves them.
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, lease_until, body, created_at,
                                    updated_at, seq, traceparent)
SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), {INFLIGHT}, 0, 0, ?, ?,
       unnest(?::BLOB[]), ?, ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[]);


-- name: enqueue_claimed_one
-- enqueue_claimed for one row (0.77 ms), the same columns in the same order.
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, lease_until, body, created_at,
                                    updated_at, seq, traceparent)
VALUES (?, ?, {INFLIGHT}, 0, 0, ?, ?, ?, ?, ?, ?, ?);


-- name: scan_advance
UPDATE scanner_cursor SET seq = ?, updated_at = ? WHERE name = 'main';


-- name: paces
-- The active webhooks with a setting of their own (queue/pacing.Pace).
SELECT webhook_id, ordering, max_in_flight, rate_limit, rate_tokens, rate_refilled_at,
       rate_next_at
FROM webhooks
WHERE active AND (ordering = {FIFO} OR max_in_flight IS NOT NULL OR rate_limit IS NOT NULL);


-- name: claim_first
-- When the first row a claim could take falls due, whatever its webhook's room (NULL: no
-- such row): asked first by a claim after one that found none (at low rates most do),
-- which then skips claim_held and claim (0.45 ms against 1.3 ms), and remembered until
-- then (batches.DUE_AFTER).
SELECT min(next_attempt_at) FROM webhook_delivery_queue WHERE status IN {SOURCES_CLAIM};


-- name: claim_held
SELECT webhook_id, count(*) FROM webhook_delivery_queue
WHERE status = {INFLIGHT} GROUP BY webhook_id;


-- name: claim
-- Candidates: due rows, oldest first, of the webhooks not in ? (those at their cap).
SELECT rowid, webhook_id, event_id, attempts, retry_base, body, traceparent, seq
FROM webhook_delivery_queue
WHERE status IN {SOURCES_CLAIM} AND next_attempt_at <= ?
  AND NOT list_contains(?::VARCHAR[], webhook_id)
ORDER BY next_attempt_at
LIMIT ?;


-- name: claim_take
-- The rows picked, by rowid: RETURNING on this table, which has a primary key, costs
-- several times the update.
UPDATE webhook_delivery_queue SET status = {INFLIGHT}, lease_until = ?, updated_at = ?
WHERE list_contains(?::BIGINT[], rowid);


-- name: claim_move
-- Every due row of rate-limited webhook ? but those handed out moves to its slot, in
-- order: the first at ?, then ? microseconds apart.
UPDATE webhook_delivery_queue AS q
SET next_attempt_at = ? + to_microseconds((v.k - 1) * ?), last_error = ?, updated_at = ?
FROM (SELECT rowid AS id,
             row_number() OVER (ORDER BY next_attempt_at, seq, event_id) AS k
      FROM webhook_delivery_queue
      WHERE webhook_id = ? AND status = {PENDING} AND next_attempt_at <= ?
        AND NOT list_contains(?::BIGINT[], rowid)) v
WHERE q.rowid = v.id;


-- name: claim_buckets
UPDATE webhooks SET rate_tokens = v.tokens, rate_refilled_at = ?, rate_next_at = v.next_at
FROM (SELECT unnest(?::VARCHAR[]) AS webhook_id, unnest(?::DOUBLE[]) AS tokens,
             unnest(?::TIMESTAMP[]) AS next_at) v
WHERE webhooks.webhook_id = v.webhook_id;


-- name: record
-- A batch of outcomes, each applied only while its row holds the claim's lease. Only
-- rows with a seq between ? and ? (the outcomes' Claim.seq) are joined: DuckDB narrows
-- that range by its column statistics instead of probing every stored id (5.9 ms against
-- 7.9 for 100 rows of 300,000 with random ids).
UPDATE webhook_delivery_queue AS q SET status = o.status,
    attempts = CASE WHEN o.spent THEN o.attempt ELSE q.attempts END,
    next_attempt_at = o.next_attempt_at, lease_until = NULL,
    last_status_code = o.status_code, last_error = o.error,
    last_attempt_at = CASE WHEN o.spent THEN o.attempted_at ELSE q.last_attempt_at END,
    updated_at = ?
FROM (SELECT unnest(?::VARCHAR[]) AS webhook_id, unnest(?::VARCHAR[]) AS event_id,
             unnest(?::VARCHAR[]) AS status, unnest(?::INTEGER[]) AS attempt,
             unnest(?::TIMESTAMP[]) AS next_attempt_at,
             unnest(?::INTEGER[]) AS status_code, unnest(?::VARCHAR[]) AS error,
             unnest(?::TIMESTAMP[]) AS attempted_at,
             unnest(?::TIMESTAMP[]) AS claimed_until,
             unnest(?::BOOLEAN[]) AS spent) o
WHERE q.webhook_id = o.webhook_id AND q.event_id = o.event_id
  AND q.status = {INFLIGHT}
  AND (o.claimed_until IS NULL OR q.lease_until = o.claimed_until)
  AND q.seq BETWEEN ? AND ?;


-- name: record_attempts
INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at, duration_ms,
                                status_code, error, response_excerpt, outcome)
SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::INTEGER[]),
       unnest(?::TIMESTAMP[]), unnest(?::DOUBLE[]), unnest(?::INTEGER[]),
       unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]);


-- name: record_one
-- record for a batch of one outcome, as at low rates: the list form's join costs DuckDB
-- about 2.6 ms for one row, this point update 1.3 ms. The same rule, in $n order: status,
-- spent, attempt, next_attempt_at, status_code, error, attempted_at, updated_at,
-- webhook_id, event_id, claimed_until, and the seq range ($12, $13): with the row's own
-- seq it costs 1.4 ms at a million stored rows with random ids, 44 ms without (a scan).
UPDATE webhook_delivery_queue SET status = $1,
    attempts = CASE WHEN $2 THEN $3 ELSE attempts END,
    next_attempt_at = $4, lease_until = NULL,
    last_status_code = $5, last_error = $6,
    last_attempt_at = CASE WHEN $2 THEN $7 ELSE last_attempt_at END,
    updated_at = $8
WHERE seq BETWEEN $12 AND $13 AND webhook_id = $9 AND event_id = $10
  AND status = {INFLIGHT} AND ($11::TIMESTAMP IS NULL OR lease_until = $11);


-- name: record_attempt
-- record_attempts for one attempt (0.65 ms against 1.0 ms for its lists of one).
INSERT INTO webhook_deliveries (webhook_id, event_id, attempt, attempted_at, duration_ms,
                                status_code, error, response_excerpt, outcome)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?);


-- name: record_gone
-- The webhooks ? whose endpoint answered 410.
UPDATE webhooks SET active = false, updated_at = ?,
    disabled_reason = 'the endpoint answered 410 Gone'
WHERE active AND list_contains(?::VARCHAR[], webhook_id)
RETURNING webhook_id, tenant, event_types, disabled_reason;


-- name: release
UPDATE webhook_delivery_queue AS q SET status = {PENDING}, lease_until = NULL,
    next_attempt_at = ?, updated_at = ?
FROM (SELECT unnest(?::VARCHAR[]) AS webhook_id, unnest(?::VARCHAR[]) AS event_id) k
WHERE q.webhook_id = k.webhook_id AND q.event_id = k.event_id
  AND q.status IN {SOURCES_RELEASE}
RETURNING q.webhook_id;


-- name: prune_delivered
DELETE FROM webhook_delivery_queue WHERE rowid IN (
    SELECT rowid FROM webhook_delivery_queue
    WHERE status = {DELIVERED} AND updated_at < ?
    LIMIT ?)
RETURNING 1;


-- name: prune_attempts
DELETE FROM webhook_deliveries WHERE rowid IN (
    SELECT rowid FROM webhook_deliveries WHERE attempted_at < ? LIMIT ?)
RETURNING 1;


-- name: failing_since
-- A webhook fails since its first attempt after its last delivered one (or after it was
-- created or last enabled).
UPDATE webhooks AS w SET failing_since = f.since
FROM (
    SELECT w.webhook_id,
           (SELECT min(l.attempted_at) FROM webhook_deliveries l
            WHERE l.webhook_id = w.webhook_id
              AND l.attempted_at >= coalesce(w.health_reset_at, w.created_at)
              AND l.attempted_at > coalesce(
                  (SELECT max(ok.attempted_at) FROM webhook_deliveries ok
                   WHERE ok.webhook_id = w.webhook_id
                     AND ok.outcome = {DELIVERED}),
                  '-infinity'::TIMESTAMP)) AS since
    FROM webhooks w WHERE w.active
) f
WHERE w.webhook_id = f.webhook_id
  AND w.failing_since IS DISTINCT FROM f.since;


-- name: auto_disable
-- Deactivate the webhooks failing since before ?.
UPDATE webhooks SET active = false, updated_at = ?,
    disabled_reason = 'every attempt failed since '
        || strftime(failing_since, '%Y-%m-%dT%H:%M:%SZ')
WHERE active AND failing_since IS NOT NULL AND failing_since < ?
RETURNING webhook_id, tenant, event_types, disabled_reason;


-- name: get_webhook
SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = ?;


-- name: create_webhook
INSERT INTO webhooks (webhook_id, url, secret, event_types, active, description,
                      created_at, updated_at, health_reset_at,
                      rate_limit, max_in_flight, ordering, delivery_options, public_key,
                      tenant)
VALUES (?, ?, ?, ?, true, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);


-- name: get_webhook_secrets
SELECT url, secret, previous_secret, previous_secret_expires_at, delivery_options
FROM webhooks WHERE webhook_id = ?;


-- name: list_webhooks
-- After webhook ?, of tenant ? if not NULL (the tenant given twice).
SELECT {WEBHOOK_COLUMNS} FROM webhooks
WHERE webhook_id > ? AND (?::VARCHAR IS NULL OR tenant = ?)
ORDER BY webhook_id LIMIT ?;


-- name: webhook_pace
-- What an update of a webhook compares its patch with.
SELECT active, webhook_id, ordering, max_in_flight, rate_limit, rate_tokens,
       rate_refilled_at, rate_next_at, delivery_options
FROM webhooks WHERE webhook_id = ?;


-- name: rate_limited_due
-- The rows of webhook ? that waited for its old rate limit: due now, paced again.
UPDATE webhook_delivery_queue SET next_attempt_at = ?, updated_at = ?
WHERE webhook_id = ? AND status = {PENDING} AND next_attempt_at > ? AND last_error = ?;


-- name: fifo_waiting_due
-- The rows of webhook ? that waited behind its head: due now, in any order.
UPDATE webhook_delivery_queue SET next_attempt_at = ?, updated_at = ?
WHERE webhook_id = ? AND status = {PENDING} AND next_attempt_at IS NULL;


-- name: delete_webhook
DELETE FROM webhooks WHERE webhook_id = ? RETURNING 1;


-- name: rotate_secret
-- public_key: the new key's, for a v1a webhook (NULL for v1).
UPDATE webhooks SET previous_secret = secret, secret = ?,
    previous_secret_expires_at = ?, updated_at = ?, public_key = ?
WHERE webhook_id = ? RETURNING 1;


-- name: list_deliveries
-- Newest first, filtered by webhook ?, event ?, status ? and tenant ? (given twice; each
-- if not NULL), after the cursor (created_at, webhook_id, event_id) if there is one.
SELECT {DELIVERY_COLUMNS} FROM webhook_delivery_queue
WHERE webhook_id = coalesce(?, webhook_id) AND event_id = coalesce(?, event_id)
  AND status = coalesce(?, status)
  AND (?::VARCHAR IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = ?))
  AND (?::TIMESTAMP IS NULL OR (created_at, webhook_id, event_id) < (?::TIMESTAMP, ?, ?))
ORDER BY created_at DESC, webhook_id DESC, event_id DESC LIMIT ?;


-- name: list_attempts
SELECT {ATTEMPT_COLUMNS} FROM webhook_deliveries
WHERE webhook_id = ? AND event_id = ? ORDER BY attempt_id;


-- name: delivery_exists
SELECT 1 FROM webhook_delivery_queue WHERE webhook_id = ? AND event_id = ?;


-- name: enable
-- The parked rows of webhook ?, enabled again: due now, with a fresh budget.
UPDATE webhook_delivery_queue SET status = {PENDING}, next_attempt_at = ?, lease_until = NULL,
    retry_base = attempts, updated_at = ?
WHERE status IN {SOURCES_ENABLE} AND webhook_id = ?
RETURNING webhook_id;


-- name: redrive
-- The rows in state ? (of webhook ?, last attempted since ? and of tenant ? (twice), if
-- not NULL): due now, with a fresh budget.
UPDATE webhook_delivery_queue SET status = {PENDING}, next_attempt_at = ?, lease_until = NULL,
    retry_base = attempts, updated_at = ?
WHERE status IN {SOURCES_REDRIVE} AND status = ? AND webhook_id = coalesce(?, webhook_id)
  AND (?::TIMESTAMP IS NULL OR last_attempt_at >= ?)
  AND (?::VARCHAR IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = ?))
RETURNING webhook_id;


-- name: replay
-- The finished rows of event ? (to webhook ? if not NULL): due now, with a fresh budget.
UPDATE webhook_delivery_queue SET status = {PENDING}, next_attempt_at = ?, lease_until = NULL,
    retry_base = attempts, updated_at = ?
WHERE status IN {SOURCES_REPLAY} AND event_id = ? AND webhook_id = coalesce(?, webhook_id)
RETURNING webhook_id;


-- name: replay_event
SELECT event_type, seq, tenant FROM pipeline_events WHERE event_id = ?;


-- name: webhook_exists
-- Its tenant (a row with NULL if none), or no row.
SELECT tenant FROM webhooks WHERE webhook_id = ?;


-- name: replay_pending
-- The pending rows of event ? (to webhook ? if not NULL).
SELECT count(*) FROM webhook_delivery_queue
WHERE event_id = ? AND webhook_id = coalesce(?, webhook_id) AND status = {PENDING};


-- name: replay_enqueue
-- Rows pruned after delivery come back from the event source: event ? for webhook ? (any
-- webhook, active, that takes it if NULL).
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, body, created_at, updated_at, seq,
                                    traceparent)
SELECT w.webhook_id, e.event_id, {PENDING}, 0, 0, ?, e.body, ?, ?, e.seq, e.traceparent
FROM pipeline_events e
JOIN webhooks w ON (w.webhook_id = ? OR (?::VARCHAR IS NULL AND {MATCHES}))
WHERE e.event_id = ?
ON CONFLICT DO NOTHING
RETURNING webhook_id;


-- name: status_counts
-- Of tenant ? (twice) if not NULL, as status_oldest_due and status_webhooks.
SELECT webhook_id, status, count(*) FROM webhook_delivery_queue WHERE (?::VARCHAR IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = ?)) GROUP BY ALL;


-- name: status_oldest_due
SELECT min(next_attempt_at) FROM webhook_delivery_queue
WHERE status = {PENDING} AND next_attempt_at <= ? AND (?::VARCHAR IS NULL OR webhook_id IN (SELECT webhook_id FROM webhooks WHERE tenant = ?));


-- name: status_scanner
SELECT (SELECT seq FROM scanner_cursor WHERE name = 'main'),
       (SELECT coalesce(max(seq), 0) FROM pipeline_events);


-- name: status_webhooks
SELECT webhook_id, active, disabled_reason FROM webhooks
WHERE (?::VARCHAR IS NULL OR tenant = ?) ORDER BY webhook_id;


-- Operational events (store/duckdb/operational.py, queue/operational.py).

-- name: operational_enqueue
-- Operational events ? for every webhook that takes them, as a scan would: the scan skips
-- them (their seq may be above an ingest not yet committed, which the cursor must not pass).
INSERT INTO webhook_delivery_queue (webhook_id, event_id, status, attempts, retry_base,
                                    next_attempt_at, body, created_at, updated_at, seq)
SELECT w.webhook_id, e.event_id, {PENDING}, 0, 0,
       CASE WHEN w.ordering = {FIFO} THEN NULL ELSE ?::TIMESTAMP END,
       e.body, ?, ?, e.seq
FROM pipeline_events e
JOIN webhooks w ON {MATCHES}
WHERE list_contains(?::VARCHAR[], e.event_id)
ON CONFLICT DO NOTHING;


-- name: operational_seqs
SELECT seq FROM pipeline_events WHERE list_contains(?::VARCHAR[], event_id) ORDER BY seq;


-- name: operational_dead
-- Which of the rows of events ? went dead in this statement's batch (updated at ?), with
-- the type of their event: deliveries of operational events report nothing.
SELECT q.webhook_id, q.event_id, starts_with(e.event_type, 'webhookd.')
FROM webhook_delivery_queue q JOIN pipeline_events e ON e.event_id = q.event_id
WHERE q.status = {DEAD} AND q.updated_at = ? AND list_contains(?::VARCHAR[], q.event_id);


-- name: operational_tallies
SELECT webhook_id, tenant, event_types, dead_count, dead_first_event, dead_last_event,
       dead_first_at, dead_reported_at
FROM webhooks WHERE list_contains(?::VARCHAR[], webhook_id);


-- name: operational_dead_due
-- The webhooks with dead deliveries to report whose last report is at least a window old.
SELECT webhook_id, tenant, event_types, dead_count, dead_first_event, dead_last_event,
       dead_first_at, dead_reported_at
FROM webhooks WHERE dead_count > 0 AND (dead_reported_at IS NULL OR dead_reported_at <= ?);


-- name: operational_tally_set
UPDATE webhooks SET dead_count = ?, dead_first_event = ?, dead_last_event = ?,
    dead_first_at = ?, dead_reported_at = ?
WHERE webhook_id = ?;


-- name: operational_failing
-- Active webhooks failing since before ? whose episode is not reported yet.
SELECT webhook_id, tenant, event_types, failing_since FROM webhooks
WHERE active AND failing_since IS NOT NULL AND failing_since < ?
  AND failing_reported IS DISTINCT FROM failing_since;


-- name: operational_recovered
-- Active webhooks reported failing that delivered since (failing_since cleared or moved on).
SELECT webhook_id, tenant, event_types, failing_reported FROM webhooks
WHERE active AND failing_reported IS NOT NULL
  AND failing_since IS DISTINCT FROM failing_reported;


-- name: operational_failing_set
UPDATE webhooks SET failing_reported = ? WHERE webhook_id = ?;


-- Webhooks, tenant tokens and the disk probe (duckdb/admin.py, tenant_tokens.py, store.py).

-- name: update_webhook
-- The one statement composed at run time: admin.py writes the SET list in place of the
-- lowercase placeholder, `column = ?` for each column the patch sets
-- (queue/webhooks.plan_patch), as the PostgreSQL engine does: which columns a patch sets
-- varies, and a column is written only when the patch sets it. Then the webhook ?.
UPDATE webhooks SET {sets} WHERE webhook_id = ?;


-- name: tenant_token_create
INSERT INTO tenant_tokens (token_id, tenant, digest, description, created_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?);


-- name: tenant_token_list
SELECT token_id, tenant, digest, description, created_at, expires_at FROM tenant_tokens
WHERE tenant = ? ORDER BY created_at, token_id;


-- name: tenant_token_revoke
DELETE FROM tenant_tokens WHERE tenant = ? AND token_id = ? RETURNING token_id;


-- name: tenant_token_find
SELECT token_id, tenant, digest, description, created_at, expires_at FROM tenant_tokens
WHERE token_id = ?;


-- name: disk_probe
-- A write of one value, so that Disk.committed sees whether there is room again with no
-- other writes coming: scanner_cursor.updated_at (which nothing reads) set to ?.
UPDATE scanner_cursor SET updated_at = ? WHERE name = 'main';
