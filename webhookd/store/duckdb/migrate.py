"""Opening the DuckDB file, and its schema migrations (webhookd/store/sql/duckdb/NNN_*.sql)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import duckdb

from webhookd.store.base import StoreUnavailable
from webhookd.store.records import utcnow


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("webhookd.store").joinpath("sql", "duckdb")
    found = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def open_connection(path: Path, memory_limit: str) -> duckdb.DuckDBPyConnection:
    parent = path.parent
    if not parent.is_dir():
        raise StoreUnavailable(
            f"database.path: directory {str(parent)!r} does not exist; create it "
            "(systemd: StateDirectory=webhookd) or point database.path elsewhere"
        )
    if not os.access(parent, os.W_OK):
        raise StoreUnavailable(
            f"database.path: directory {str(parent)!r} is not writable by this user; "
            "fix its ownership or point database.path elsewhere"
        )
    try:
        # Never fetch or load extensions: a foreign file (SQLite, say) must not make the
        # daemon download code; it is simply not a webhookd database.
        con = duckdb.connect(
            str(path),
            config={"autoinstall_known_extensions": False, "autoload_known_extensions": False},
        )
    except duckdb.IOException as exc:
        text = str(exc)
        if "Could not set lock" in text or "Conflicting lock" in text:
            raise StoreUnavailable(
                f"database.path: {str(path)!r} is held by another process ({text}); "
                "stop the other webhookd, or use the API/CLI instead of opening the file"
            ) from None
        raise StoreUnavailable(
            f"database.path: {str(path)!r} cannot be opened as a DuckDB database ({text}); "
            "is it a DuckDB file of this version? move it aside to start empty"
        ) from None
    except duckdb.Error as exc:
        raise StoreUnavailable(
            f"database.path: {str(path)!r} cannot be opened ({exc}); "
            "is it a DuckDB database? move it aside to start empty"
        ) from None
    # We checkpoint from the writer when it is idle; an automatic checkpoint inside a
    # big commit stalls every delivery behind it.
    con.execute("SET checkpoint_threshold = '256MB'")
    # Our statements are small and many: one DuckDB thread spends less on scheduling
    # than several, and leaves the other core to the event loop.
    con.execute("SET threads = 1")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    return con


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, sql in _migrations():
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utcnow()])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied
