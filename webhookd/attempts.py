"""What one POST of a delivery attempt came to, whichever HTTP client sent it
(:mod:`webhookd.sender` on aiohttp, :mod:`webhookd.reqwest_sender` on pyreqwest): the
result, the receiver's Retry-After, and the daemon's own failures, which are not the
receiver's; and the limits both clients are built with."""

from __future__ import annotations

import errno
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = [
    "LOCAL_ERRNOS",
    "AttemptResult",
    "SenderLimits",
    "local_error",
    "parse_retry_after",
]

# Longest Retry-After honoured, in seconds; larger values (and "infinite" ones)
# are clamped so callers can always do arithmetic with the result.
RETRY_AFTER_MAX = float(2**31)

_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# The daemon's own resources ran out: not the receiver's fault.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What happened on one POST."""

    status_code: int | None
    """HTTP status received, or ``None`` when no status line and headers arrived."""
    error: str | None
    """Clear text for a failure (also set for 3xx and non-2xx); ``None`` on 2xx."""
    duration_ms: float
    response_excerpt: str
    """At most ``max_response_bytes`` of the body, decoded as UTF-8 (errors replaced)."""
    retry_after: float | None
    """Seconds from ``Retry-After`` (delta-seconds or HTTP-date), or ``None``."""
    local_failure: bool = False
    """The daemon's own resources failed (see :data:`LOCAL_ERRNOS`): nothing reached the
    receiver, and the attempt must not count against it."""


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value; ``None`` if absent or unparseable.

    Accepts delta-seconds (``"120"``, leniently ``"1.5"``) and an HTTP-date, taken
    relative to ``now`` (unix seconds, default the current time). Never negative,
    clamped to :data:`RETRY_AFTER_MAX`.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (OverflowError, ValueError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def local_error(number: int) -> str:
    """The error text of a local failure, e.g. "local resource exhausted: Too many open
    files (EMFILE)"."""
    return f"local resource exhausted: {os.strerror(number)} ({errno.errorcode[number]})"


class SenderLimits:
    """What both clients are built with, whichever sends (senders.py); ValueError for what
    neither can be built with."""

    def __init__(
        self,
        *,
        timeout: float,
        max_response_bytes: int,
        allow_private: bool,
        pool_size: int,
        user_agent: str,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._timeout = float(timeout)
        self._max_response_bytes = max_response_bytes
        self._allow_private = allow_private
        self._pool_size = pool_size
        self._user_agent = user_agent
