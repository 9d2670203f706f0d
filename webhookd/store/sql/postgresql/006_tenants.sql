-- Tenants (issue 23): a webhook and an event may belong to one tenant (a customer of the
-- producer). Routing: an event goes only to webhooks of its own tenant (no tenant: only to
-- webhooks of none). The name is 1 to 128 characters of A-Z a-z 0-9 _ . : - (webhookd/
-- tenants.py); a plain INSERT with another is refused here.
ALTER TABLE webhooks ADD COLUMN tenant text
    CONSTRAINT webhooks_tenant_name CHECK (tenant ~ '^[A-Za-z0-9_.:-]+$' AND length(tenant) <= 128);
ALTER TABLE pipeline_events ADD COLUMN tenant text
    CONSTRAINT pipeline_events_tenant_name
        CHECK (tenant ~ '^[A-Za-z0-9_.:-]+$' AND length(tenant) <= 128);

-- The scan joins each event to the active webhooks of its tenant (common.MATCHES:
-- coalesce(tenant, '') on both sides, so that "no tenant" is a key like any other): this
-- index makes that a look-up per event, whatever the number of other tenants' webhooks.
CREATE INDEX webhooks_tenant_active ON webhooks ((coalesce(tenant, '')), webhook_id)
    WHERE active;
-- Listings and status filtered by tenant.
CREATE INDEX webhooks_tenant ON webhooks (tenant, webhook_id) WHERE tenant IS NOT NULL;

-- Tenant tokens: the digest (sha256 of the secret) only, never the token.
CREATE TABLE tenant_tokens (
    token_id     text PRIMARY KEY,
    tenant       text NOT NULL,
    digest       text NOT NULL,
    description  text NOT NULL,
    created_at   timestamp NOT NULL,
    expires_at   timestamp NOT NULL
);
CREATE INDEX tenant_tokens_tenant ON tenant_tokens (tenant, created_at);

-- publish() takes the tenant too, by name: publish(..., tenant => 'acme'). The same id
-- with the same type, tenant and data again is accepted without a duplicate; other
-- content raises unique_violation (the HTTP API's 409).
-- Whether the outbox guards (003_outbox_guards) made the old one SECURITY DEFINER: the new
-- one is made the same below.
SELECT set_config('webhookd.publish_definer',
                  (SELECT p.prosecdef::text FROM pg_proc p
                   WHERE p.proname = 'publish'
                     AND p.pronamespace = current_schema()::regnamespace
                   LIMIT 1), true);
DROP FUNCTION publish(text, text, jsonb, timestamptz);
CREATE FUNCTION publish(
    p_event_id text,
    p_event_type text,
    p_data jsonb,
    p_occurred_at timestamptz DEFAULT now(),
    tenant text DEFAULT NULL
) RETURNS text LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    stored_type text;
    stored_payload jsonb;
    stored_tenant text;
BEGIN
    INSERT INTO pipeline_events (event_id, event_type, payload, occurred_at, tenant)
    VALUES (p_event_id, p_event_type, p_data, p_occurred_at AT TIME ZONE 'UTC', publish.tenant)
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

-- As the outbox guards set publish(), if they did: the owner's rights, a fixed search_path,
-- EXECUTE granted by the operator only.
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
