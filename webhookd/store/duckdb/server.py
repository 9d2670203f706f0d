"""The child process that owns the DuckDB database for the daemon (see remote.py).

    python -m webhookd.store.duckdb.server FD PARENT_PID path=... memory_limit=... ...

It serves the Store calls that arrive on the socket FD, with the DuckDBStore and its
writer threads, and ends when the daemon closes it or goes away. It ignores SIGINT and
SIGTERM: those are the daemon's to act on (systemd and a terminal send them to every
process of the service), and the daemon closes the store only after draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pickle
import signal
import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from webhookd import logs
from webhookd.store.base import StoreUnavailable
from webhookd.store.duckdb.remote import Outbox, read_frame
from webhookd.store.duckdb.store import DuckDBStore

PR_SET_PDEATHSIG = 1
LOCK_WAIT = 2.0


def _die_with(parent: int) -> None:
    """SIGKILL this process when the daemon dies, whatever kills it (kill -9 included)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives pickling, else a plain one with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class Server:
    def __init__(self, store: DuckDBStore, writer: asyncio.StreamWriter) -> None:
        self._store = store
        self._outbox = Outbox(writer, wrap=self._with_stats)
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()

    def _with_stats(self, replies: list[Any]) -> tuple[tuple[int, int, bool], list[Any]]:
        # And whether the database can be written (not while its disk is full): /readyz.
        return (*self._store.writer_stats, self._store.available()), replies

    def _reply(self, call_id: int, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._outbox.put((call_id, False, RuntimeError("cancelled")))
        elif (exc := future.exception()) is not None:
            self._outbox.put((call_id, False, _portable(exc)))
        else:
            self._outbox.put((call_id, True, future.result()))

    def handle(self, call_id: int, name: str, args: tuple[Any, ...]) -> None:
        # record() queues at once, so an outcome is never overtaken by a later call
        if name == "record":
            try:
                future: asyncio.Future[Any] = self._store.record(*args)
            except Exception as exc:  # the store is closed: say so, keep serving
                self._outbox.put((call_id, False, _portable(exc)))
                return
        else:
            future = asyncio.ensure_future(self._call(name, args))
        future.add_done_callback(partial(self._reply, call_id))

    async def _open(self) -> None:
        # The store process of a daemon killed a moment ago may still hold the file lock
        # for the few milliseconds its own SIGKILL takes.
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                await self._store.open()
                return
            except StoreUnavailable as exc:
                if "held by another process" not in str(exc) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.05)

    async def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        if name == "open":
            await self._open()
            return self._store.migrations_applied
        if name == "close":
            await self._store.close()
            self.closed.set()
            return None
        return await getattr(self._store, name)(*args)


async def serve(fd: int, options: dict[str, str]) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    store = DuckDBStore(
        Path(options["path"]),
        memory_limit=options["memory_limit"],
        checkpoint_interval=float(options["checkpoint_interval"]),
    )
    server = Server(store, writer)
    while not server.closed.is_set():
        try:
            calls = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if server.closed.is_set():
                break
            # The daemon is gone without closing us: stop as it did. Commits are durable;
            # what was not committed is what a kill -9 of a single process would lose too.
            os._exit(0)
        for call_id, name, args in calls:
            server.handle(call_id, name, args)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return 0


def main(argv: list[str]) -> int:
    fd, parent = int(argv[0]), int(argv[1])
    options = dict(arg.split("=", 1) for arg in argv[2:])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with(parent)
    logs.configure(options.get("log_format", "json"), options.get("log_level", "info"))
    try:
        import uvloop

        return int(uvloop.run(serve(fd, options)))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(serve(fd, options))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
