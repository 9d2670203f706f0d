"""Ports and child processes: bounded waits, and stops that touch only the process given."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


class KitError(AssertionError):
    """A process of the kit did not start or answer as it must. An AssertionError, so that a
    test fails on it (rather than erroring) as it did on the kit's asserts."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[Any] | None, deadline: float = 10.0) -> None:
    """Until something listens on 127.0.0.1:port; raises if `proc` exits first."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise KitError(f"process exited {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise KitError(f"nothing listening on 127.0.0.1:{port} after {deadline}s")


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` if its parent dies without cleaning up (Linux).

    The kernel sends it when the *thread* that started the child exits, so start such
    children from a thread that lives as long as they should."""

    def set_pdeathsig() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG

    return set_pdeathsig


def stop_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, grace: float = 10.0
) -> int | None:
    """Signal the process, wait up to `grace`, then kill it. Only this process, by its id."""
    if proc is None:
        return None
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
    return proc.returncode
