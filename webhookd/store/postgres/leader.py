"""Leader election for upkeep: a row that names the leading daemon, valid while that
daemon's heartbeat is fresh.

A session-level advisory lock went with the session, not with the daemon: a daemon frozen
(SIGSTOP, a VM paused, a debugger) kept its connection and so the lock, while its heartbeat
went stale, and no one rescued its rows. Here leadership follows the heartbeat: a daemon
whose heartbeat (by the database's clock) is older than peer_timeout loses it to the next
daemon that asks, and a daemon whose own heartbeat is stale (it has just woken up) does not
lead until it has beaten again. Asking costs one statement, which writes only on a change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from webhookd import logs
from webhookd.store.postgres.queries import query

log = logs.get("webhookd.store")


class Leader:
    def __init__(
        self, call: Callable[..., Awaitable[Any]], daemon_id: str, dead_after: float
    ) -> None:
        """`call(fn, *args)` runs `fn(connection, *args)` on a pooled connection."""
        self._call = call
        self._daemon_id = daemon_id
        self._dead_after = dead_after
        self._held = False
        self._failing = False

    async def lead(self) -> bool:
        """True while this daemon leads; False when the database cannot say so."""
        try:
            held = bool(await self._call(self._ask))
        except Exception as exc:
            if self._held or not self._failing:
                log.warning("upkeep leadership lost or unavailable", problem=str(exc))
            self._failing = True
            self._held = False
            return False
        self._failing = False
        if held and not self._held:
            log.info("this daemon leads upkeep")
        elif self._held and not held:
            log.warning("upkeep leadership lost: another daemon took over")
        self._held = held
        return held

    async def _ask(self, con: Any) -> bool:
        return bool(await con.fetchval(query("lead"), self._daemon_id, float(self._dead_after)))
