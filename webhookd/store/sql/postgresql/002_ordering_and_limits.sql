-- Per-webhook delivery settings (issue 12): a rate limit, a concurrency cap of its own and
-- the order of deliveries. Nothing is renamed.
--   rate_limit        deliveries per second; NULL: no limit. A token bucket with a burst of
--                     greatest(1, rate_limit): rate_tokens as of rate_refilled_at (NULL:
--                     full), and rate_next_at, the next free slot for rows that found it
--                     empty. Read and written by claims only, under the claim lock: one
--                     bucket for every daemon on this schema.
--   max_in_flight     concurrent attempts to this webhook, across daemons; NULL:
--                     delivery.per_webhook_concurrency
--   ordering          'none', or 'fifo': one at a time, in the events' order (seq)
ALTER TABLE webhooks
    ADD COLUMN rate_limit double precision
        CONSTRAINT webhooks_rate_limit_positive CHECK (rate_limit > 0),
    ADD COLUMN max_in_flight integer
        CONSTRAINT webhooks_max_in_flight_positive CHECK (max_in_flight >= 1),
    ADD COLUMN ordering text NOT NULL DEFAULT 'none'
        CONSTRAINT webhooks_ordering_known CHECK (ordering IN ('none', 'fifo')),
    ADD COLUMN rate_tokens double precision,
    ADD COLUMN rate_refilled_at timestamp,
    ADD COLUMN rate_next_at timestamp;

-- The event's seq on its queue rows (copied at enqueue and replay): a fifo webhook's order,
-- and its head (the lowest seq of its pending and inflight rows), without a join. A pending
-- row of a fifo webhook waiting behind its head has no next_attempt_at.
ALTER TABLE webhook_delivery_queue ADD COLUMN seq bigint NOT NULL DEFAULT 0;
UPDATE webhook_delivery_queue q SET seq = e.seq
FROM pipeline_events e WHERE e.event_id = q.event_id;

-- One webhook's pending rows: those waiting behind a fifo head (next_attempt_at NULL, in
-- seq order, last), the head itself, and the rows a rate limit or a change moves. Every
-- look-up of a fifo head goes through it in O(log n), whatever waits behind the head.
CREATE INDEX webhook_delivery_queue_webhook_pending ON webhook_delivery_queue
    (webhook_id, next_attempt_at, seq) WHERE status = 'pending';
