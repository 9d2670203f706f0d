-- Tracing (issue 24): the producer's W3C traceparent, stored with the event and copied to
-- each of its queue rows, so that a claim reads it with the body; NULL: none was sent.
ALTER TABLE pipeline_events ADD COLUMN traceparent VARCHAR;
ALTER TABLE webhook_delivery_queue ADD COLUMN traceparent VARCHAR;
