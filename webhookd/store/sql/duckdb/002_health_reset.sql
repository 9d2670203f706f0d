-- When failure tracking for auto-disable starts over: at creation and at each enable.
-- failing_since is computed from the log by the auto-disabler, not on the hot path.
ALTER TABLE webhooks ADD COLUMN health_reset_at TIMESTAMP;
UPDATE webhooks SET health_reset_at = coalesce(updated_at, created_at);
