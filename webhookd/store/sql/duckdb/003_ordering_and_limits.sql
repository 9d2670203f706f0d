-- Per-webhook delivery settings (issue 12): a rate limit, a concurrency cap of its own and
-- the order of deliveries. Nothing is renamed.
--   rate_limit        deliveries per second; NULL: no limit. A token bucket with a burst of
--                     max(1, rate_limit): rate_tokens as of rate_refilled_at (NULL: full),
--                     and rate_next_at, the next free slot for rows that found it empty.
--   max_in_flight     concurrent attempts to this webhook; NULL: delivery.per_webhook_concurrency
--   ordering          'none', or 'fifo': one at a time, in the events' order (seq)
ALTER TABLE webhooks ADD COLUMN rate_limit DOUBLE;
ALTER TABLE webhooks ADD COLUMN max_in_flight INTEGER;
ALTER TABLE webhooks ADD COLUMN ordering VARCHAR DEFAULT 'none';
ALTER TABLE webhooks ADD COLUMN rate_tokens DOUBLE;
ALTER TABLE webhooks ADD COLUMN rate_refilled_at TIMESTAMP;
ALTER TABLE webhooks ADD COLUMN rate_next_at TIMESTAMP;
UPDATE webhooks SET ordering = 'none' WHERE ordering IS NULL;

-- The event's seq on its queue rows (copied at enqueue and replay): a fifo webhook's order,
-- and its head (the lowest seq of its pending and inflight rows), without a join. A pending
-- row of a fifo webhook waiting behind its head has no next_attempt_at.
ALTER TABLE webhook_delivery_queue ADD COLUMN seq BIGINT DEFAULT 0;
UPDATE webhook_delivery_queue AS q SET seq = e.seq
FROM pipeline_events e WHERE e.event_id = q.event_id;
