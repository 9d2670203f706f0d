-- The outbox guard (003_outbox_guards.sql) cost about 45 µs of server CPU per row, the
-- daemon's ingest included: a plpgsql call with its own search_path, and a catalog look-up
-- for the owner, per row. It now runs only for rows not written by the daemon (the WHEN
-- clause costs a setting look-up), without a SET clause (next_event_seq is named with its
-- schema). The daemon's own ingest takes the columns' defaults (xid, seq, ingested_at),
-- which is what the guard would set; a session claiming to be the daemon (the startup
-- setting webhookd.daemon = on) may write a body, so a producer role gets INSERT on the
-- columns it may write only (README, "Scaling out"), never on body.
DROP TRIGGER pipeline_events_guard ON pipeline_events;
DROP FUNCTION guard_event();
DO $do$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION guard_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                NEW.xid := OLD.xid;
                NEW.seq := OLD.seq;
                NEW.ingested_at := OLD.ingested_at;
                NEW.body := OLD.body;
                RETURN NEW;
            END IF;
            NEW.xid := pg_current_xact_id();
            NEW.ingested_at := now() AT TIME ZONE 'UTC';
            NEW.body := NULL;
            NEW.seq := %I.next_event_seq();
            RETURN NEW;
        END $$
    $f$, current_schema());
END $do$;
CREATE TRIGGER pipeline_events_guard BEFORE INSERT OR UPDATE ON pipeline_events
    FOR EACH ROW
    WHEN (coalesce(current_setting('webhookd.daemon', true), '') <> 'on')
    EXECUTE FUNCTION guard_event();
