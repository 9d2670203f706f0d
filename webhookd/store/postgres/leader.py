"""Leader election for upkeep: a session-level advisory lock on a dedicated connection.

The daemon whose connection holds `pg_try_advisory_lock(<leader key of the schema>)`
leads; the lock goes with the session, so a daemon that dies, or whose connection is
killed, loses it at once and another daemon takes it at its next try. The connection is
not from the pool: a pooled connection would carry the lock into other work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from webhookd import logs

log = logs.get("webhookd.store")

TIMEOUT = 5.0


class Leader:
    def __init__(self, connect: Callable[[], Awaitable[Any]], key: int) -> None:
        self._connect = connect
        self._key = key
        self._con: Any = None
        self._held = False
        self._lock = asyncio.Lock()
        self._failing = False

    @property
    def server_pid(self) -> int | None:
        """The backend holding (or trying for) the lock, for tests and logs."""
        con = self._con
        return None if con is None else int(con.get_server_pid())

    async def lead(self) -> bool:
        """True while this daemon holds the lock on a live connection. A lost connection
        answers False once; the next call connects again and tries for the lock."""
        async with self._lock:
            con = self._con
            if con is not None and con.is_closed():
                self._drop("the leader's connection was lost")
                return False
            try:
                if con is not None and self._held:
                    await asyncio.wait_for(con.fetchval("SELECT 1"), TIMEOUT)
                    return True
                if con is None:
                    con = self._con = await asyncio.wait_for(self._connect(), TIMEOUT)
                self._held = bool(
                    await asyncio.wait_for(
                        con.fetchval("SELECT pg_try_advisory_lock($1)", self._key), TIMEOUT
                    )
                )
            except Exception as exc:
                self._drop(f"cannot hold the upkeep lock: {type(exc).__name__}: {exc}")
                return False
            if self._failing:
                self._failing = False
            if self._held:
                log.info("this daemon leads upkeep")
            return self._held

    def _drop(self, why: str) -> None:
        if self._held or not self._failing:
            log.warning("upkeep leadership lost or unavailable", problem=why)
        self._failing = True
        self._held = False
        con, self._con = self._con, None
        if con is not None:
            con.terminate()

    async def close(self) -> None:
        async with self._lock:
            con, self._con = self._con, None
            self._held = False
            if con is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(con.close(), TIMEOUT)
                if not con.is_closed():
                    con.terminate()
