-- Operational events (issue 24), per webhook (webhookd/queue/operational.py):
--   failing_reported  the failing_since of the episode reported as webhookd.webhook.failing
--                     (NULL: none reported); recovered is reported when it changes
--   dead_*            dead deliveries not reported yet (count, first and last event ids,
--                     when the first went dead) and when webhookd.delivery.dead was last
--                     reported: at most one a minute
ALTER TABLE webhooks ADD COLUMN failing_reported TIMESTAMP;
ALTER TABLE webhooks ADD COLUMN dead_count INTEGER DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN dead_first_event VARCHAR;
ALTER TABLE webhooks ADD COLUMN dead_last_event VARCHAR;
ALTER TABLE webhooks ADD COLUMN dead_first_at TIMESTAMP;
ALTER TABLE webhooks ADD COLUMN dead_reported_at TIMESTAMP;
