"""The daemon as a real subprocess (`python -m webhookd run --config PATH`), for tests and
the bench: started, watched through its log, signalled, stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from tests.kit.procs import KitError, die_with_parent, stop_process

REPO = Path(__file__).resolve().parents[2]
READY = "webhookd ready"


class DaemonProcess:
    """`python -m MODULE run --config CONFIG` as a subprocess, stdout and stderr appended to
    `log_path`.

    `env` is added to `base_env` (default: this process's environment). `module` is what
    runs (`tests.fenced_daemon` fences the daemon's deliveries to loopback); `cwd` is where
    (the repository; the bench runs a saved copy of webhookd/ from its own directory).

    It is ready when it logs "webhookd ready", which it does at log level info or lower.
    With `notify`, the kit also listens on an sd_notify socket of its own (NOTIFY_SOCKET),
    where the daemon reports "serving on ADDRESS" at any log level. With
    `die_with_parent`, the daemon is killed if this process dies without stopping it.
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        base_env: Mapping[str, str] | None = None,
        module: str = "webhookd",
        cwd: Path | None = None,
        notify: bool = False,
        die_with_parent: bool = False,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**(os.environ if base_env is None else base_env), **(env or {})}
        self.module = module
        self.cwd = cwd or REPO
        self.notify = notify
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._log_offset = 0
        self._notify: socket.socket | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, *, deadline: float = 30.0) -> Self:
        """Start it and wait until it serves (`url` is then its API); raises KitError if it
        exits first or is not ready within `deadline` seconds (and then stops it)."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(self.env)
        if self.notify:
            env["NOTIFY_SOCKET"] = self._listen_notify()
            env.pop("WATCHDOG_USEC", None)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                preexec_fn=die_with_parent(signal.SIGKILL) if self.die_with_parent else None,
            )
        try:
            self.url = self._wait_ready(deadline)
        except BaseException:
            stop_process(self.proc, signal.SIGKILL, grace=5.0)
            self._close_notify()
            raise
        return self

    def _listen_notify(self) -> str:
        path = self.log_path.with_name(self.log_path.stem + ".notify")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._close_notify()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(path))
        self._notify.setblocking(False)
        return str(path)

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def _notified_address(self) -> str | None:
        if self._notify is None:
            return None
        with contextlib.suppress(BlockingIOError):
            for _ in range(100):  # the datagrams queued so far
                message = self._notify.recv(4096).decode(errors="replace")
                for line in message.splitlines():
                    if line.startswith("STATUS=serving on "):
                        return line.removeprefix("STATUS=serving on ").strip()
        return None

    def _wait_ready(self, deadline: float) -> str:
        assert self.proc is not None
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            address = self._notified_address()
            if address is not None:
                return "http://" + address
            for line in self.lines():
                if line.get("event") == READY:
                    return "http://" + str(line["listen"])
            if self.proc.poll() is not None:
                raise KitError(f"daemon exited {self.proc.returncode}: {self.output()}")
            time.sleep(0.02)
        raise KitError(f"daemon not ready in {deadline}s: {self.output()}")

    def output(self) -> str:
        """What it printed since the last start."""
        try:
            return self.log_path.read_text(errors="replace")[self._log_offset :]
        except OSError:
            return ""

    def lines(self) -> list[dict[str, Any]]:
        """Its JSON log lines since the last start (other lines skipped)."""
        result = []
        for raw in self.output().splitlines():
            with contextlib.suppress(ValueError):
                result.append(json.loads(raw))
        return result

    def errors(self) -> list[dict[str, Any]]:
        """The log lines at level error or above since the last start."""
        return [r for r in self.lines() if r.get("level") in ("error", "critical")]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM (the daemon drains for shutdown.grace), SIGKILL after `grace` seconds."""
        if self.proc is None:
            return 0
        code = stop_process(self.proc, signal.SIGTERM, grace=grace)
        self._close_notify()
        return 0 if code is None else code
