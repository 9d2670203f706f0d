-- The event source the scanner tails by seq.
CREATE SEQUENCE pipeline_events_seq START 1;
CREATE TABLE pipeline_events (
    event_id     VARCHAR PRIMARY KEY,
    seq          BIGINT NOT NULL DEFAULT nextval('pipeline_events_seq'),
    event_type   VARCHAR NOT NULL,
    payload      JSON NOT NULL,
    -- the canonical body, built once at ingest, copied to every queue row
    body         BLOB NOT NULL,
    occurred_at  TIMESTAMP NOT NULL,
    ingested_at  TIMESTAMP NOT NULL
);

CREATE TABLE webhooks (
    webhook_id                  VARCHAR PRIMARY KEY,
    url                         VARCHAR NOT NULL,
    secret                      VARCHAR NOT NULL,
    previous_secret             VARCHAR,
    previous_secret_expires_at  TIMESTAMP,
    event_types                 VARCHAR[] NOT NULL,
    active                      BOOLEAN NOT NULL,
    description                 VARCHAR NOT NULL,
    disabled_reason             VARCHAR,
    failing_since               TIMESTAMP,
    created_at                  TIMESTAMP NOT NULL,
    updated_at                  TIMESTAMP NOT NULL
);

CREATE TABLE webhook_delivery_queue (
    webhook_id        VARCHAR NOT NULL,
    event_id          VARCHAR NOT NULL,
    status            VARCHAR NOT NULL,
    attempts          INTEGER NOT NULL,
    -- attempts already spent when last redriven or replayed: max_attempts counts from here
    retry_base        INTEGER NOT NULL,
    next_attempt_at   TIMESTAMP,
    lease_until       TIMESTAMP,
    body              BLOB NOT NULL,
    last_status_code  INTEGER,
    last_error        VARCHAR,
    last_attempt_at   TIMESTAMP,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL,
    PRIMARY KEY (webhook_id, event_id)
);

-- Append-only: one row per attempt; only retention pruning deletes.
-- No primary key index: the sequence makes attempt_id unique and an ART index
-- would tax every insert on the hot path.
CREATE SEQUENCE webhook_deliveries_seq START 1;
CREATE TABLE webhook_deliveries (
    attempt_id        BIGINT NOT NULL DEFAULT nextval('webhook_deliveries_seq'),
    webhook_id        VARCHAR NOT NULL,
    event_id          VARCHAR NOT NULL,
    attempt           INTEGER NOT NULL,
    attempted_at      TIMESTAMP NOT NULL,
    duration_ms       DOUBLE NOT NULL,
    status_code       INTEGER,
    error             VARCHAR,
    response_excerpt  VARCHAR,
    outcome           VARCHAR NOT NULL
);

CREATE TABLE scanner_cursor (
    name        VARCHAR PRIMARY KEY,
    seq         BIGINT NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);
INSERT INTO scanner_cursor VALUES ('main', 0, now()::TIMESTAMP);
