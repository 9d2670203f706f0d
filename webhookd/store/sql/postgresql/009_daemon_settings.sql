-- Each daemon's settings that must agree across daemons on one queue (store/peers.py):
-- a daemon that disagrees with a peer says so in its log and in /v1/status.
ALTER TABLE daemons ADD COLUMN settings jsonb NOT NULL DEFAULT '{}';
