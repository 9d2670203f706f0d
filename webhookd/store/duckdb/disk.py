"""A full disk, and a database DuckDB has invalidated: what the store knows of its storage."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from webhookd import logs
from webhookd.store.base import StorageFull, StoreUnavailable

log = logs.get("webhookd.store")


# -- a full disk ------------------------------------------------------------------------
# Measured on DuckDB 2.0.1 (README, "A full disk"): a COMMIT that finds no room for the WAL
# fails ("Failed to commit: Could not write file ...wal: No space left on device"), rolls
# back and leaves the file as it was, and the same connection commits again once there is
# room. A CHECKPOINT that finds no room is worse: DuckDB invalidates the database, and every
# later statement on every cursor fails ("FATAL Error: Failed: database has been
# invalidated ...") until the file is closed and opened again.

# DuckDB quotes the OS (ENOSPC, EDQUOT); its temporary directory, which it sizes from the
# free space, says "failed to offload data block" when that is full.
DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "failed to offload data block")
INVALIDATED_WORDS = "database has been invalidated"
# An outcome the disk has no room for is kept and tried again every RETRY_OUTCOME seconds,
# for HOLD_OUTCOME seconds at most: well within the daemon's stall timeout (60 s by
# default), past which a call left unanswered stops the watchdog's pings. Then its caller
# is told, and the row, still inflight, is re-driven by its lease.
HOLD_OUTCOME = 20.0
RETRY_OUTCOME = 1.0
# A poll (scan, claim) or a chore (rescue, prune, release, auto-disable) that cannot commit
# for want of room is answered "nothing done" after this pause: not an error that its
# caller would log at every poll.
FULL_PAUSE = 0.5
# The episode ends when a commit that appended to the WAL succeeds with this much room left.
ROOM_AGAIN = 4 << 20
# A CHECKPOINT wrote about three quarters of the WAL's size into the file (measured): with
# less room than twice the WAL and this margin, it waits for room rather than invalidate
# the database.
CHECKPOINT_MARGIN = 8 << 20
REOPEN_EVERY = 1.0
# A disk full again this soon after it had room is the same episode, flapping at the edge:
# a warning, not another error.
FLAPPING = 60.0


class Disk:
    """What the store knows of its database's storage, shared by its cursors (any thread):
    whether the disk is full (an episode: one error line when it starts, one info line when
    it ends), and whether DuckDB invalidated the database (until the store reopens it)."""

    def __init__(self, path: Path, on_broken: Callable[[], None]) -> None:
        self.path = path
        self.full_since: float | None = None
        self.broken: StoreUnavailable | None = None
        self._on_broken = on_broken
        self._wal_at_failure = -1
        self._reopen_failed = False
        self._ended = -FLAPPING
        self._lock = threading.Lock()

    def free(self) -> int:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return 1 << 62
        return st.f_bavail * st.f_frsize

    def wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}.wal").st_size
        except OSError:
            return -1

    def room_for_checkpoint(self) -> bool:
        return self.free() >= 2 * max(0, self.wal_size()) + CHECKPOINT_MARGIN

    def failed(self, exc: duckdb.Error) -> StoreUnavailable | None:
        """What a statement's failure means: StorageFull for a full disk, StoreUnavailable
        for a database DuckDB has invalidated, None for any other error (raised as it is)."""
        text = str(exc)
        full = any(words in text for words in DISK_FULL_WORDS)
        invalidated = INVALIDATED_WORDS in text or isinstance(exc, duckdb.FatalException)
        if not (full or invalidated):
            return None
        detail = " ".join(text.split())  # one line: an invalidation's message spans several
        # What callers (and the API's clients) see; the log line has DuckDB's words.
        error = (
            StorageFull("the database's disk is full: nothing was written; try again later")
            if full
            else StoreUnavailable("the database is being reopened after an error")
        )
        started = broke = False
        with self._lock:
            if full:
                self._wal_at_failure = self.wal_size()
                if self.full_since is None:
                    self.full_since = time.monotonic()
                    started = True
            if invalidated and self.broken is None:
                self.broken = error
                broke = True
        if started:
            again = time.monotonic() - self._ended < FLAPPING
            (log.warning if again else log.error)(
                "the database's disk is full again"
                if again
                else "the database's disk is full: ingest answers 503 storage_full and "
                "deliveries wait until there is room (logged once until it has room again)",
                path=str(self.path),
                free_bytes=self.free(),
                error=detail,
            )
        if broke:
            (log.warning if full else log.error)(
                "DuckDB invalidated the database; reopening it", path=str(self.path), error=detail
            )
            self._on_broken()
        return error

    def broken_error(self) -> StoreUnavailable:
        broken = self.broken
        if broken is None:
            return StoreUnavailable("the database is reopening")
        return type(broken)(str(broken))  # a fresh one for each caller (its traceback)

    def committed(self) -> None:
        """A commit succeeded during an episode: it ends once a commit appended to the WAL
        (one that wrote nothing proves nothing) with room to spare."""
        if (
            self.broken is not None
            or self.wal_size() == self._wal_at_failure
            or self.free() < ROOM_AGAIN
        ):
            return
        with self._lock:
            since, self.full_since = self.full_since, None
            self._ended = time.monotonic()
        if since is not None:
            log.info(
                "the database's disk has room again: ingest and deliveries resume",
                path=str(self.path),
                free_bytes=self.free(),
                seconds=round(time.monotonic() - since, 1),
            )

    def reopen_failed(self, problem: str) -> None:
        if not self._reopen_failed:
            self._reopen_failed = True
            log.warning("cannot reopen the database yet; trying every second", error=problem)

    def reopened(self) -> None:
        with self._lock:
            self.broken = None
            self._reopen_failed = False
            self._wal_at_failure = self.wal_size()  # replaying the WAL may have changed it
        log.info("the database was reopened", path=str(self.path))
