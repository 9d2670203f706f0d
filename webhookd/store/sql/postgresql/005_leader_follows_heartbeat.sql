-- Upkeep's leader (leader.py): the daemon named here leads while its heartbeat in daemons
-- is fresh; another daemon takes the row over once it is not (a frozen leader kept a
-- session advisory lock for ever).
CREATE TABLE upkeep_leader (
    name       text PRIMARY KEY,
    daemon_id  text,
    since      timestamp NOT NULL
);
INSERT INTO upkeep_leader VALUES ('upkeep', NULL, now() AT TIME ZONE 'UTC');
