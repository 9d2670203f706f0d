"""The LISTEN connection: wakes the scanner and the workers when any daemon or producer
commits work on this schema.

A dedicated connection (not from the pool: a pooled one would be handed to other work)
listens on the schema's channels and sets one asyncio.Event per kind of work. When it is
lost (PostgreSQL restarted, the connection killed), it is opened again with backoff, and
every event is set once it is back: anything may have happened meanwhile, and the
callers' polling covers the time in between.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from webhookd import logs
from webhookd.store.postgres.common import stop_task
from webhookd.store.postgres.queries import query

log = logs.get("webhookd.store")

PING_TIMEOUT = 5.0
# Events announcements kept until a scan has seen them (Listener.unseen); beyond this
# many they are folded into one of unknown transaction, which any scan begun after it
# sees.
MAX_UNSEEN = 1024


def visible(xid: int, snapshot: str) -> bool:
    """Whether the transaction `xid` had committed for the snapshot `snapshot`, in its
    text form (xmin:xmax:xip,...): pg_visible_in_snapshot for a transaction known to
    have committed."""
    xmin, xmax, xip = snapshot.split(":")
    return xid < int(xmin) or (xid < int(xmax) and str(xid) not in xip.split(","))


class Listener:
    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        channels: Mapping[str, str],
        on_state: Callable[[bool, BaseException | None], None],
    ) -> None:
        """`channels` maps each kind of work to its NOTIFY channel; `on_state` hears of
        every loss (False, the error) and every (re)connection (True, None)."""
        self._connect = connect
        self._kinds = {channel: kind for kind, channel in channels.items()}
        self.events = {kind: asyncio.Event() for kind in channels}
        self._on_state = on_state
        self._con: Any = None
        self._lost = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        self._pokes: dict[str, asyncio.TimerHandle] = {}
        # Events announcements no scan is known to have seen: (loop time it arrived, the
        # committing transaction's xid, None when the payload names none).
        self.unseen: list[tuple[float, int | None]] = []
        # The snapshot of the last scan that read every event it saw (see seen).
        self._seen_snapshot: str | None = None

    @property
    def connected(self) -> bool:
        return self._con is not None and not self._con.is_closed()

    async def start(self) -> None:
        """Listen now (raising if the connection cannot be made), and keep listening."""
        await self._open()
        self._task = asyncio.create_task(self._supervise(), name="webhookd-pg-listen")

    def done(self) -> bool:
        """The supervising task ended, which it only does when closed."""
        return self._task is not None and self._task.done()

    async def _open(self) -> None:
        con = await self._connect()
        try:
            for channel in self._kinds:
                # asyncpg quotes the channel: ours hold a dot ("<schema>.events").
                await con.add_listener(channel, self._notified)
        except BaseException:
            con.terminate()
            raise
        self._lost.clear()
        con.add_termination_listener(self._terminated)
        self._con = con
        for event in self.events.values():
            event.set()
        self._on_state(True, None)

    def _notified(self, con: Any, pid: int, channel: str, payload: str) -> None:
        kind = self._kinds.get(channel)
        if kind is None or (kind == "events" and not self._announced(payload)):
            return
        self.events[kind].set()

    def _announced(self, payload: str) -> bool:
        """Keep an events announcement until a scan has seen it; False if the last scan
        did already (the API's own ingest, whose scan it woke may end before this
        arrives): nothing to wake the scanners for."""
        try:
            xid: int | None = int(payload)
        except ValueError:  # a schema older than 012_notify_xid.sql
            xid = None
        snapshot = self._seen_snapshot
        if xid is not None and snapshot is not None and visible(xid, snapshot):
            return False
        now = asyncio.get_running_loop().time()
        if len(self.unseen) >= MAX_UNSEEN:
            self.unseen = [(now, None)]
        else:
            self.unseen.append((now, xid))
        return True

    def seen(self, started: float, snapshot: str, fresh: bool) -> bool:
        """A scan begun at loop time `started` read every event its snapshot `snapshot`
        sees (`fresh`: a snapshot it took itself, after `started`): forget the
        announcements it saw. Whether any are left, which it may not have seen: their
        transactions committed after its snapshot."""
        self._seen_snapshot = snapshot
        self.unseen = [
            (at, xid)
            for at, xid in self.unseen
            if not ((fresh and at < started) or (xid is not None and visible(xid, snapshot)))
        ]
        return bool(self.unseen)

    def poke_later(self, kind: str, delay: float) -> None:
        """Report `kind` of work in `delay` seconds, as a notification would. One poke of
        a kind is pending at a time, the earliest asked for: each poke wakes every scanner
        and each of their scans asks for one more, so pokes kept side by side multiplied
        (8.7 scans per event at 50 events/s, seen)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self._pokes.get(kind)
        if pending is not None:
            if pending.when() <= due:
                return
            pending.cancel()
        self._pokes[kind] = loop.call_at(due, self._poke, kind)

    def _poke(self, kind: str) -> None:
        self._pokes.pop(kind, None)
        self.events[kind].set()

    def _terminated(self, con: Any) -> None:
        if con is self._con:
            self._lost.set()

    async def ping(self) -> None:
        """Use the connection once: a connection whose peer vanished without closing it
        (a network partition) is only found out by using it."""
        con = self._con
        if con is None:
            return
        try:
            await asyncio.wait_for(con.execute(query("ping")), PING_TIMEOUT)
        except Exception as exc:
            if con is self._con:
                self._on_state(False, exc)
                self._lost.set()

    async def _supervise(self) -> None:
        while not self._closing:
            await self._lost.wait()
            if self._closing:
                return
            old, self._con = self._con, None
            if old is not None:
                old.terminate()
            self._on_state(False, ConnectionError("the LISTEN connection was lost"))
            delay = 0.1
            while not self._closing:
                try:
                    await self._open()
                except Exception as exc:
                    self._on_state(False, exc)
                    if not self._closing:
                        await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                else:
                    self.reconnects += 1
                    log.info("listening for work again")
                    break

    async def close(self) -> None:
        self._closing = True
        self._lost.set()
        for pending in self._pokes.values():
            pending.cancel()
        self._pokes.clear()
        await stop_task(self._task, PING_TIMEOUT)
        con, self._con = self._con, None
        if con is not None:
            try:
                await asyncio.wait_for(con.close(), PING_TIMEOUT)
            except Exception:
                con.terminate()
