"""The systemd notify protocol (sd_notify(3)), standard library only.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` set to a unix datagram socket
(a path, or an abstract name written ``@name``). The daemon tells systemd how it is doing by
sending newline-separated ``KEY=VALUE`` datagrams to it:

- ``READY=1`` once it serves (``systemctl start`` returns then, not at fork),
- ``STATUS=...`` a line of text shown by ``systemctl status``,
- ``STOPPING=1`` when it begins to shut down,
- ``WATCHDOG=1`` a liveness ping. With ``WatchdogSec=`` in the unit, systemd sets
  ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and kills and restarts the service when no ping
  arrives within that time. We ping every half of it, as sd_watchdog_enabled(3) advises, and
  only while the daemon's own health check passes: a wedged daemon is restarted.

Outside systemd (no ``NOTIFY_SOCKET``) every method is a no-op, and a send that fails is
ignored: telling systemd is best effort and must never take the daemon down.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]

# Bound on how long one send may block the event loop when systemd's queue is full.
_SEND_TIMEOUT = 1.0


def _socket_address(value: str | None) -> str | None:
    """The address for sendto(): a filesystem path, or an abstract name ('@' becomes NUL)."""
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # Anything else (a relative path, vsock:..., garbage) is not something we can reach.
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """WATCHDOG_USEC if the watchdog is meant for this process, else None."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != pid:
                return None  # the watchdog belongs to another process (our parent, say)
        except ValueError:
            return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None


def _one_line(text: str) -> str:
    """A STATUS value on one line: a newline would start a new KEY=VALUE assignment."""
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify messages to the socket systemd gave us; does nothing without one."""

    def __init__(self, notify_socket: str | None, watchdog_usec: int | None = None) -> None:
        """``notify_socket``: as in NOTIFY_SOCKET, a path or ``@name``; None disables.

        ``watchdog_usec``: the watchdog timeout in microseconds, None when not requested.
        Most callers want :meth:`from_env`.
        """
        self._address = _socket_address(notify_socket)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (default: ``os.environ``).

        The watchdog is honoured only when WATCHDOG_PID is absent or names this process
        (``pid``, default ``os.getpid()``).
        """
        env = os.environ if environ is None else environ
        own_pid = os.getpid() if pid is None else pid
        return cls(env.get("NOTIFY_SOCKET"), _watchdog_usec(env, own_pid))

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), None without a watchdog.

        None also when notifications are disabled: pings would go nowhere.
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1e6

    def ready(self, status: str | None = None) -> None:
        """READY=1: start-up is finished and the daemon serves."""
        self._send("READY=1", status)

    def stopping(self, status: str | None = None) -> None:
        """STOPPING=1: shutdown has begun."""
        self._send("STOPPING=1", status)

    def status(self, text: str) -> None:
        """STATUS=...: one line for ``systemctl status``."""
        self._send(None, text)

    def watchdog(self) -> None:
        """WATCHDOG=1: one liveness ping."""
        self._send("WATCHDOG=1", None)

    async def run_watchdog(self, healthy: Callable[[], bool]) -> None:
        """Ping the watchdog every :meth:`watchdog_interval` seconds while ``healthy()`` is true.

        Checks at once, then after every interval. A health check that returns false (or
        raises) skips that ping, so systemd restarts a daemon that stays unhealthy for the
        whole WatchdogSec. Returns at once when there is no watchdog; runs until cancelled.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            try:
                ok = healthy()
            except Exception:
                ok = False
            if ok:
                self.watchdog()
            await asyncio.sleep(interval)

    def _send(self, flag: str | None, status: str | None) -> None:
        if self._address is None:
            return
        lines = [flag] if flag else []
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        if not lines:
            return
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT)
                sock.sendto(message, self._address)
        except OSError:
            pass  # best effort: systemd gone, socket full or unreachable
