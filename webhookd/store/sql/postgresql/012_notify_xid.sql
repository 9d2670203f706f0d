-- The events notification names the transaction that committed the events (its xid8, as
-- pipeline_events.xid). A scanner that hears it can tell whether a scan's snapshot saw
-- those events, and looks again only if not (PostgresStore.scan): with an empty payload
-- every notification that arrived during a scan meant another scan, one per event for
-- the API's own ingests, whose scan starts before their notification arrives.
CREATE OR REPLACE FUNCTION notify_events() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_notify(current_schema() || '.events', pg_current_xact_id()::text);
    RETURN NULL;
END $$;
