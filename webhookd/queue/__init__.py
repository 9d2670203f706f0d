"""The queue's rules, written once for every engine: each module decides and returns
what to do; the engines in webhookd/store/ only carry it out, in their own SQL.

- conflicts.py: when a re-posted event id is the same event (409 otherwise).
- pacing.py: a webhook's cap (claims and the worker pool) and its token bucket.
- webhooks.py: what a PATCH of a webhook writes and does to its queued rows.
- replay.py: what a replay finds (tenants), which rows it takes, what they become, its count
  (held on every engine by tests/test_replay_rule.py).
- status.py: the status report from the rows an engine reads.

Rules that must run inside a statement to be atomic are written in each dialect under
one name, side by side, and held to one test: the cap and the bucket of a PostgreSQL
claim (`CAP`, `TOKENS` in sql/postgresql/queries.sql, tests/test_queue_rules.py); the
fifo order (`fifo_settle` in both queries.sql) and the lease fence (`record`: an
outcome applies only while its row still holds the lease of the claim it answers,
Outcome.claimed_until) in both, held by the conformance suite (tests/test_store.py)
on every engine.
"""
