-- Tenants (issue 23): a webhook and an event may belong to one tenant (a customer of the
-- producer). Routing: an event goes only to webhooks of its own tenant (no tenant: only to
-- webhooks of none); the scan joins on coalesce(tenant, '') (common.MATCHES), an equality
-- DuckDB hashes, so an event meets its own tenant's webhooks, not every webhook.
ALTER TABLE webhooks ADD COLUMN tenant VARCHAR;
ALTER TABLE pipeline_events ADD COLUMN tenant VARCHAR;

-- Tenant tokens: the digest (sha256 of the secret) only, never the token.
CREATE TABLE tenant_tokens (
    token_id     VARCHAR PRIMARY KEY,
    tenant       VARCHAR NOT NULL,
    digest       VARCHAR NOT NULL,
    description  VARCHAR NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    expires_at   TIMESTAMP NOT NULL
);
