-- Producers that write pipeline_events in SQL (issue 22): what they may not decide.
--
-- xid, seq and ingested_at say where an event stands in the scanner's order; body is what
-- subscribers receive. They are the daemon's: a trigger sets them whatever an INSERT or
-- UPDATE says. A body is kept only when the daemon's own ingest wrote it (a connection
-- that says so with the startup setting webhookd.daemon = on, under the role owning the
-- table); any other row gets its body built by the scanner from its id, type, time and
-- data, as the API would have.

-- A time Python (and so the body) cannot carry is refused by the table. NOT VALID: rows
-- already stored are not checked here; the scanner sets such a row aside (rejected_events).
ALTER TABLE pipeline_events
    ADD CONSTRAINT pipeline_events_occurred_at_in_range
        CHECK (occurred_at >= '0001-01-01 00:00:00' AND occurred_at < '10000-01-01 00:00:00')
        NOT VALID;

-- The next seq, with the owner's rights: a producer role needs no privilege on the sequence.
-- pg_temp last in its search_path: no temporary table can stand in for pipeline_events.
CREATE FUNCTION next_event_seq() RETURNS bigint LANGUAGE sql SECURITY DEFINER AS $$
    SELECT nextval(pg_get_serial_sequence('pipeline_events', 'seq'))
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION next_event_seq() SET search_path = %I, pg_temp',
                   current_schema());
END $$;

CREATE FUNCTION guard_event() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    daemon boolean := coalesce(current_setting('webhookd.daemon', true), '') = 'on'
        AND pg_has_role(current_user,
                        (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE');
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.xid := OLD.xid;
        NEW.seq := OLD.seq;
        NEW.ingested_at := OLD.ingested_at;
        -- Only the daemon fills a body, and only one that was not built yet.
        IF NOT daemon OR OLD.body IS NOT NULL THEN
            NEW.body := OLD.body;
        END IF;
        RETURN NEW;
    END IF;
    NEW.xid := pg_current_xact_id();
    NEW.ingested_at := now() AT TIME ZONE 'UTC';
    IF NOT daemon THEN
        -- The daemon's ingest takes the identity's seq; anyone else's is drawn again (an
        -- INSERT ... OVERRIDING SYSTEM VALUE may have chosen it).
        NEW.body := NULL;
        NEW.seq := next_event_seq();
    END IF;
    RETURN NEW;
END $$;
-- The trigger runs as the inserting user, who therefore calls next_event_seq (EXECUTE
-- stays granted to PUBLIC: all it can do is draw a seq).

CREATE TRIGGER pipeline_events_guard BEFORE INSERT OR UPDATE ON pipeline_events
    FOR EACH ROW EXECUTE FUNCTION guard_event();

-- Events the scanner could not deliver (a time out of range, data over
-- admin.max_body_bytes, a body it could not build): set aside with the reason, counted
-- in /v1/status, never in the way of the events after them.
CREATE TABLE rejected_events (
    event_id     text PRIMARY KEY,
    error        text NOT NULL,
    rejected_at  timestamp NOT NULL
);

-- publish() runs with its owner's rights and a fixed search_path (pg_temp last, so no
-- temporary table can stand in for a webhookd one): a producer role needs EXECUTE on it
-- and USAGE on the schema, and no right to read other producers' events.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.proname = 'publish' AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       f, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
