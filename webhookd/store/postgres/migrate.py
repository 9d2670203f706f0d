"""Schema migrations for the PostgreSQL engine, and the advisory lock keys of a schema.

Migrations are webhookd/store/sql/postgresql/NNN_*.sql, applied in order, all of them in
one transaction that holds a transaction-level advisory lock derived from the schema
name: daemons starting together queue on the lock, and each one after the first finds
the versions recorded in <schema>.schema_migrations and applies nothing.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

# Every advisory lock the engine takes, one key per (schema, purpose): two schemas on
# one database never share a lock, and the keys are the same in every daemon.
MIGRATE = "migrate"
SCANNER = "scanner"


def lock_key(schema: str, purpose: str) -> int:
    """A signed 64-bit advisory lock key: the first 8 bytes of
    sha256("webhookd/<schema>/<purpose>"). Stable across processes and versions
    (Python's hash() is not)."""
    digest = hashlib.sha256(f"webhookd/{schema}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    folder = resources.files("webhookd.store").joinpath("sql", "postgresql")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit() and name[3:4] == "_":
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(con: Any, schema: str) -> list[int]:
    """Create the schema if needed and apply the migrations it lacks; the versions applied."""
    applied: list[int] = []
    async with con.transaction():
        # A daemon's statements have timeouts (store.py); a migration, run once at start
        # while /readyz says not ready, waits for its peers' and takes as long as it takes.
        await con.execute("SET LOCAL lock_timeout = 0; SET LOCAL statement_timeout = 0")
        await con.execute("SELECT pg_advisory_xact_lock($1)", lock_key(schema, MIGRATE))
        # Checked first: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even
        # when the schema exists, which a daemon's role need not have.
        exists = await con.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        if not exists:
            await con.execute(f"CREATE SCHEMA {quote_ident(schema)}")
        await con.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamp NOT NULL)"
        )
        done = {r[0] for r in await con.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await con.execute(sql)  # no arguments: the simple protocol runs the whole file
            await con.execute(
                "INSERT INTO schema_migrations VALUES ($1, $2, now() AT TIME ZONE 'UTC')",
                version,
                name,
            )
            applied.append(version)
    return applied
