-- Tracing (issue 24): the producer's W3C traceparent, stored with the event (a producer
-- writing in SQL may set it too; a malformed one is refused here) and copied to each of its
-- queue rows, so that a claim reads it with the body; NULL: none was sent.
ALTER TABLE pipeline_events ADD COLUMN traceparent text
    CONSTRAINT pipeline_events_traceparent_w3c
        CHECK (traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
               AND traceparent !~ '^ff-' AND traceparent !~ '^..-0{32}-'
               AND traceparent !~ '-0{16}-..$');
ALTER TABLE webhook_delivery_queue ADD COLUMN traceparent text;
