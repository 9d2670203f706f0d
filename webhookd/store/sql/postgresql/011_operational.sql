-- Operational events (issue 24), per webhook (webhookd/queue/operational.py):
--   failing_reported  the failing_since of the episode reported as webhookd.webhook.failing
--                     (NULL: none reported); recovered is reported when it changes
--   dead_*            dead deliveries not reported yet (count, first and last event ids,
--                     when the first went dead) and when webhookd.delivery.dead was last
--                     reported: at most one a minute
ALTER TABLE webhooks
    ADD COLUMN failing_reported timestamp,
    ADD COLUMN dead_count integer NOT NULL DEFAULT 0,
    ADD COLUMN dead_first_event text,
    ADD COLUMN dead_last_event text,
    ADD COLUMN dead_first_at timestamp,
    ADD COLUMN dead_reported_at timestamp;
-- The upkeep's look for dead deliveries to report: the few webhooks with some.
CREATE INDEX webhooks_dead_pending ON webhooks (webhook_id) WHERE dead_count > 0;
