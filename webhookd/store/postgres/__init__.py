"""The PostgreSQL engine: several daemons share one queue (see store.py)."""

from webhookd.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
