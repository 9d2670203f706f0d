-- Tracing (issue 24): the producer's W3C traceparent, stored with the event (a producer
-- writing in SQL may set it too; a malformed one is refused here) and copied to each of its
-- queue rows, so that a claim reads it with the body; NULL: none was sent.
ALTER TABLE pipeline_events ADD COLUMN traceparent text
    CONSTRAINT pipeline_events_traceparent_w3c
        CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
               AND traceparent !~ '^ff-' AND traceparent !~ '^..-0{32}-'
               AND traceparent !~ '-0{16}-..$');
ALTER TABLE webhook_delivery_queue ADD COLUMN traceparent text;

-- publish() takes it too, by name: publish(..., traceparent => '00-...-01'). It is not
-- part of the event's content: the same event published again with another traceparent is
-- accepted, and keeps the first.
SELECT set_config('webhookd.publish_definer',
                  (SELECT p.prosecdef::text FROM pg_proc p
                   WHERE p.proname = 'publish'
                     AND p.pronamespace = current_schema()::regnamespace
                   LIMIT 1), true);
DROP FUNCTION publish(text, text, jsonb, timestamptz, text);
CREATE FUNCTION publish(
    p_event_id text,
    p_event_type text,
    p_data jsonb,
    p_occurred_at timestamptz DEFAULT now(),
    tenant text DEFAULT NULL,
    traceparent text DEFAULT NULL
) RETURNS text LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    stored_type text;
    stored_payload jsonb;
    stored_tenant text;
BEGIN
    INSERT INTO pipeline_events (event_id, event_type, payload, occurred_at, tenant,
                                 traceparent)
    VALUES (p_event_id, p_event_type, p_data, p_occurred_at AT TIME ZONE 'UTC', publish.tenant,
            publish.traceparent)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        SELECT e.event_type, e.payload, e.tenant
        INTO stored_type, stored_payload, stored_tenant
        FROM pipeline_events e WHERE e.event_id = p_event_id;
        IF stored_type IS DISTINCT FROM p_event_type OR stored_payload IS DISTINCT FROM p_data
           OR stored_tenant IS DISTINCT FROM publish.tenant THEN
            RAISE unique_violation USING
                MESSAGE = format('event id %L already used with other content', p_event_id);
        END IF;
    END IF;
    RETURN p_event_id;
END $$;

-- As the outbox guards set publish(), if they did (see 006_tenants).
DO $$
DECLARE
    f regprocedure;
BEGIN
    IF coalesce(current_setting('webhookd.publish_definer', true), '') <> 'true' THEN
        RETURN;
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.proname = 'publish' AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = %I, pg_temp',
                       f, current_schema());
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END $$;
