"""Error translation for the PostgreSQL engine, in one place.

A database that cannot be reached (refused, reset, restarting, shutting down, out of
connections) is StoreUnavailable: the API answers 503 and the loops try again. Anything
else (a bug, a constraint) passes through unchanged. Messages never carry a password.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]

from webhookd.config import redact_url
from webhookd.store.base import StorageFull, StoreUnavailable

# Errors meaning "the server is not there for us now", as opposed to "this statement is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, name resolution
    TimeoutError,  # connect timeout
    asyncpg.PostgresConnectionError,  # class 08, and ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,  # starting up, in recovery
    asyncpg.AdminShutdownError,  # fast shutdown, pg_terminate_backend
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidAuthorizationSpecificationError,  # a role dropped, a password changed
    asyncpg.InvalidCatalogNameError,  # the database dropped
    asyncpg.ReadOnlySQLTransactionError,  # connected to a standby after a fail-over
)
# Worth running the same statement again: the server chose this transaction as a victim.
RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# A statement that waited on a lock past lock_timeout, or ran past statement_timeout: the
# server answers, but something else (a DBA's ALTER TABLE, a producer's open transaction)
# holds what it needs. The call fails as StoreUnavailable (503, loops try again) without
# the database being taken for unreachable.
TIMED_OUT = (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError)


class LockTimeout(StoreUnavailable):
    """A statement gave up waiting for a lock (lock_timeout) or ran too long."""


def is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # A connection asyncpg found closed under it, or a pool closing under a call.
    return isinstance(exc, asyncpg.InterfaceError) and (
        "connection is closed" in str(exc)
        or "connection was closed" in str(exc)
        or "pool is closing" in str(exc)
        or "pool is closed" in str(exc)
    )


def timed_out(exc: BaseException, url: str) -> LockTimeout:
    detail = scrub(str(exc) or type(exc).__name__, url)
    return LockTimeout(f"the database is busy: {detail}")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.DiskFullError)


def scrub(text: str, url: str) -> str:
    """`text` without the URL's password (drivers echo parts of a DSN in their errors)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password or "")}:
        if secret:
            text = text.replace(secret, "**********")
    return text


def unavailable(exc: BaseException, url: str) -> StoreUnavailable:
    """The StoreUnavailable a failed call raises: the API answers it with a 503 (a full disk
    on the server, StorageFull, with `storage_full`)."""
    detail = scrub(str(exc) or type(exc).__name__, url)
    if is_disk_full(exc):
        return StorageFull(f"the database server is out of disk space: {detail}")
    return StoreUnavailable(f"the database is unavailable: {detail}")


def open_error(exc: BaseException, url: str, schema: str) -> StoreUnavailable:
    """Why the store cannot open, and what to do about it, naming the setting at fault."""
    where = redact_url(url)
    detail = scrub(str(exc) or type(exc).__name__, url)
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        hint = (
            "authentication failed; check the user and password in database.url "
            "(or database.url_file) and the server's pg_hba.conf"
        )
    elif isinstance(exc, asyncpg.InvalidCatalogNameError):
        hint = "the database does not exist; create it or fix the name in database.url"
    elif isinstance(exc, asyncpg.InsufficientPrivilegeError):
        hint = (
            f"the user may not create or change schema {schema!r}; grant it CREATE on the "
            "database (or create the schema for it), or change database.schema"
        )
    elif isinstance(exc, (asyncpg.ClientConfigurationError, ValueError)):
        hint = "database.url is not a valid PostgreSQL URL (postgresql://user@host:port/db)"
    elif is_unavailable(exc):
        hint = (
            "cannot connect; is PostgreSQL running and reachable there, and is database.url right?"
        )
    else:
        hint = f"cannot prepare schema {schema!r} (its migrations failed)"
    return StoreUnavailable(f"database.url {where}: {hint} ({detail})")
