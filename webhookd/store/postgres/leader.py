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

log = logs.get("webhookd.store")

# Take over from a leader whose heartbeat is stale (or who left), and say whether this
# daemon ($1) leads, its own heartbeat fresh ($2 seconds, peer_timeout). A concurrent
# takeover by another daemon makes this UPDATE wait for it, then find the row taken by a
# live daemon (READ COMMITTED re-checks the row), and update nothing.
LEAD = """
WITH fresh AS (
    SELECT d.daemon_id FROM daemons d
    WHERE d.heartbeat_at >= now() AT TIME ZONE 'UTC' - make_interval(secs => $2)
), took AS (
    UPDATE upkeep_leader l SET daemon_id = $1, since = now() AT TIME ZONE 'UTC'
    WHERE l.name = 'upkeep'
      AND $1 IN (SELECT daemon_id FROM fresh)
      AND l.daemon_id IS DISTINCT FROM $1
      AND (l.daemon_id IS NULL OR l.daemon_id NOT IN (SELECT daemon_id FROM fresh))
    RETURNING l.daemon_id
)
SELECT EXISTS (SELECT 1 FROM took)
    OR EXISTS (SELECT 1 FROM upkeep_leader l
               WHERE l.name = 'upkeep' AND l.daemon_id = $1
                 AND $1 IN (SELECT daemon_id FROM fresh))
"""


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
        return bool(await con.fetchval(LEAD, self._daemon_id, float(self._dead_after)))
