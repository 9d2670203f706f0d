"""The one place that picks the storage engine from the settings."""

from __future__ import annotations

from dataclasses import dataclass

from webhookd.config import ConfigError, Settings, redact_url
from webhookd.store.base import Notifier, Owner, Peer, Store
from webhookd.store.duckdb.remote import RemoteStore


@dataclass(frozen=True, slots=True)
class Engine:
    """A storage engine's parts: the store; for a database several daemons share, the
    leader election (peer) and the wake-ups (notifier); for a database one daemon owns,
    the owner (the start-up rescue). None where the engine has no such part."""

    store: Store
    peer: Peer | None = None
    notifier: Notifier | None = None
    owner: Owner | None = None


def make_store(settings: Settings) -> Store:
    return make_engine(settings).store


def make_engine(settings: Settings) -> Engine:
    """DuckDB in a child process (database.path), or PostgreSQL (database.url or url_file).
    Raises ConfigError when the URL file cannot be read."""
    db = settings.database
    if db.engine == "postgresql":
        from webhookd.store.postgres import PostgresStore
        from webhookd.store.postgres.peers import shared_settings

        store = PostgresStore(
            db.resolve_url(),
            schema=db.db_schema,
            pool_size=db.pool(settings.delivery.workers),
            dead_after=db.peer_timeout,
            # Several beats per timeout, so one late beat never looks like a death.
            heartbeat_interval=max(0.2, min(2.0, db.peer_timeout / 6)),
            max_event_bytes=settings.admin.max_body_bytes,
            shared_settings=shared_settings(settings, _token(settings)),
        )
        return Engine(store, peer=store, notifier=store)
    remote = RemoteStore(
        db.path,
        memory_limit=db.memory_limit,
        checkpoint_interval=db.checkpoint_interval,
        log_format=settings.logging.format,
        log_level=settings.logging.level,
        poll_interval=settings.scanner.poll_interval,
        stall_timeout=db.stall_timeout,
    )
    return Engine(remote, owner=remote)


def describe(settings: Settings) -> str:
    """Where the data lives, for logs: the file, or the URL without its password."""
    db = settings.database
    if db.engine == "duckdb":
        return str(db.path)
    if db.url is not None:
        return f"{redact_url(db.url.get_secret_value())} schema {db.db_schema}"
    return f"url from {db.url_file} schema {db.db_schema}"


def _token(settings: Settings) -> str | None:
    """The admin token, to compare its digest with other daemons' (None if unreadable: the
    daemon reports that itself)."""
    try:
        return settings.admin.resolve_token()
    except ConfigError:
        return None
