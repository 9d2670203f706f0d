-- webhookd on PostgreSQL. Applied by the daemon at start-up, in the schema named by
-- database.schema (the search_path is set to it), under an advisory lock so that daemons
-- starting together do not race. Times are UTC, without time zone, as on DuckDB.

-- The event source. Producers append here, through the HTTP API or in their own
-- transaction (publish() below, or a plain INSERT of event_id, event_type, payload).
-- The scanner tails it by (xid, seq), only below the oldest transaction still running,
-- so an event whose transaction commits after a later one was scanned is not skipped.
CREATE TABLE pipeline_events (
    event_id     text PRIMARY KEY,
    seq          bigint GENERATED ALWAYS AS IDENTITY,
    xid          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,
    -- The canonical body, built once at ingest by the daemon; NULL for an event written
    -- by a producer in SQL: the scanner builds it (canonical JSON is the daemon's job).
    body         bytea,
    occurred_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    ingested_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    -- 1 to 256 printable ASCII characters, no space (webhookd/events.py). Not {1,256}:
    -- PostgreSQL's regular expressions allow a repetition count of 255 at most.
    CONSTRAINT pipeline_events_event_id_printable
        CHECK (event_id ~ '^[!-~]+$' AND length(event_id) <= 256),
    CONSTRAINT pipeline_events_event_type_printable
        CHECK (event_type ~ '^[!-~]+$' AND length(event_type) <= 256)
);
CREATE INDEX pipeline_events_xid_seq ON pipeline_events (xid, seq);

CREATE TABLE webhooks (
    webhook_id                  text PRIMARY KEY,
    url                         text NOT NULL,
    secret                      text NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamp,
    event_types                 text[] NOT NULL,
    active                      boolean NOT NULL,
    description                 text NOT NULL,
    disabled_reason             text,
    failing_since               timestamp,
    health_reset_at             timestamp,
    -- The last attempt got no answer at all: every daemon then sends one at a time.
    silent                      boolean NOT NULL DEFAULT false,
    created_at                  timestamp NOT NULL,
    updated_at                  timestamp NOT NULL
);

CREATE TABLE webhook_delivery_queue (
    webhook_id        text NOT NULL,
    event_id          text NOT NULL,
    status            text NOT NULL,
    attempts          integer NOT NULL,
    -- attempts already spent when last redriven or replayed: max_attempts counts from here
    retry_base        integer NOT NULL,
    next_attempt_at   timestamp,
    lease_until       timestamp,
    -- the daemon holding the claim (daemons.daemon_id); NULL unless inflight
    claimed_by        text,
    body              bytea NOT NULL,
    last_status_code  integer,
    last_error        text,
    last_attempt_at   timestamp,
    created_at        timestamp NOT NULL,
    updated_at        timestamp NOT NULL,
    PRIMARY KEY (webhook_id, event_id)
);
-- Claims read due pending rows in next_attempt_at order; caps count inflight rows.
CREATE INDEX webhook_delivery_queue_due ON webhook_delivery_queue (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_delivery_queue_inflight ON webhook_delivery_queue (webhook_id, lease_until)
    WHERE status = 'inflight';
CREATE INDEX webhook_delivery_queue_event ON webhook_delivery_queue (event_id);
CREATE INDEX webhook_delivery_queue_listing ON webhook_delivery_queue
    (created_at DESC, webhook_id DESC, event_id DESC);
CREATE INDEX webhook_delivery_queue_finished ON webhook_delivery_queue (updated_at)
    WHERE status = 'delivered';

-- Append-only: one row per attempt; only retention pruning deletes.
CREATE TABLE webhook_deliveries (
    attempt_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id        text NOT NULL,
    event_id          text NOT NULL,
    attempt           integer NOT NULL,
    attempted_at      timestamp NOT NULL,
    duration_ms       double precision NOT NULL,
    status_code       integer,
    error             text,
    response_excerpt  text,
    outcome           text NOT NULL
);
CREATE INDEX webhook_deliveries_key ON webhook_deliveries (webhook_id, event_id);
CREATE INDEX webhook_deliveries_attempted ON webhook_deliveries (attempted_at);

-- The scanner's durable position: the (xid, seq) of the last event enqueued.
CREATE TABLE scanner_cursor (
    name        text PRIMARY KEY,
    xid         xid8 NOT NULL,
    seq         bigint NOT NULL,
    updated_at  timestamp NOT NULL
);
INSERT INTO scanner_cursor VALUES ('main', '0'::xid8, 0, now() AT TIME ZONE 'UTC');

-- The daemons sharing this queue, with their last heartbeat: the leader re-drives the
-- inflight rows of a daemon that stopped beating without waiting for their leases.
CREATE TABLE daemons (
    daemon_id     text PRIMARY KEY,
    hostname      text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamp NOT NULL,
    heartbeat_at  timestamp NOT NULL
);

-- Wake the scanners of every daemon when events are committed (a statement trigger:
-- one notification per INSERT, delivered at commit, for the API and the outbox alike).
CREATE FUNCTION notify_events() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(current_schema() || '.events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER pipeline_events_notify AFTER INSERT ON pipeline_events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events();

-- The transactional outbox: a producer calls this in its own transaction; the event is
-- delivered if and only if that transaction commits. The same id with the same type and
-- data again is accepted without a duplicate (a retried transaction); with other content
-- it raises unique_violation, as the HTTP API answers 409.
CREATE FUNCTION publish(
    p_event_id text,
    p_event_type text,
    p_data jsonb,
    p_occurred_at timestamptz DEFAULT now()
) RETURNS text LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    stored_type text;
    stored_payload jsonb;
BEGIN
    INSERT INTO pipeline_events (event_id, event_type, payload, occurred_at)
    VALUES (p_event_id, p_event_type, p_data, p_occurred_at AT TIME ZONE 'UTC')
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        SELECT event_type, payload INTO stored_type, stored_payload
        FROM pipeline_events WHERE event_id = p_event_id;
        IF stored_type IS DISTINCT FROM p_event_type OR stored_payload IS DISTINCT FROM p_data THEN
            RAISE unique_violation USING
                MESSAGE = format('event id %L already used with other content', p_event_id);
        END IF;
    END IF;
    RETURN p_event_id;
END $$;
